"""Security defaults that must not regress: loopback only, token auth on, no model API,
and only `weights_only=True` loads of files that could come from users."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def properties() -> dict[str, str]:
    props = {}
    for line in (ROOT / "config.properties").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            props[k.strip()] = v.strip()
    return props


def test_every_listener_is_on_loopback():
    props = properties()
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), f"{key}={props[key]}"
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert props.get(key) == "127.0.0.1", f"{key}={props.get(key)} (TorchServe binds gRPC to 0.0.0.0 unless set)"


def test_token_auth_on_and_model_api_off():
    props = properties()
    assert props.get("disable_token_authorization", "false").lower() == "false"
    assert props.get("enable_model_api", "false").lower() == "false"


def test_torch_load_is_always_weights_only():
    offenders = []
    files = [p for folder in ("pipeline", "handlers", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 40  # the scan sees the whole code base, not an empty glob
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"
