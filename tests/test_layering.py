"""The stage rules of docs/architecture.md, checked on the source: which stage may import which,
and the serving package runs with the training stack absent."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.serve.model_io import load_model
from pipeline.tools.stylize import stylize_bytes
from serving_helpers import BLOCK_TRAINING_DEPS, encode_pil, rng_image, shared_export

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("common", "model", "serve", "data", "loss", "train", "export", "tools", "quality", "ops")
# stage → the stages it may import (itself included). Stated once here; docs/architecture.md shows it.
ALLOWED = {
    "common": {"common"},
    "model": {"model", "common"},  # common: `atomic_write` of a packaged model
    "serve": {"serve", "model", "common"},  # the .mar bundles what the handler imports of these
    "data": {"data", "common"},
    "loss": {"loss", "model", "common"},
    "train": {"train", "data", "model", "loss", "common"},
    "export": {"export", "model", "serve", "common"},
    "tools": {"tools", "serve", "model", "common"},
    "quality": {"quality", "data", "model", "loss", "train", "export", "serve", "tools", "common"},
    "ops": {"ops", "export", "serve", "common"},
}
SERVING = {"serve", "model", "common"}  # what a TorchServe worker may run
TRAINING_STACK = {"lightning", "pytorch_lightning", "lightning_fabric", "webdataset", "torchvision"}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement in a file."""
    tree = ast.parse(path.read_text(), str(path))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) not in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pipeline":  # `from pipeline import serve` names subpackages
                found += [(f"pipeline.{a.name}", id(node) not in nested) for a in node.names]
            else:
                found.append((node.module, id(node) not in nested))
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 and parts[1] in STAGES else None


def test_every_module_belongs_to_a_stage():
    loose = sorted(p.name for p in (ROOT / "pipeline").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside any stage: {loose}"
    assert {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(STAGES)
    assert "import" not in (ROOT / "pipeline" / "__init__.py").read_text()  # bundled into every .mar


@pytest.mark.parametrize("stage", STAGES)
def test_imports_only_go_down_the_stages(stage):
    bad = []
    for path in sorted((ROOT / "pipeline" / stage).rglob("*.py")):
        for module, top_level in imports(path):
            target = stage_of(module)
            if module.startswith("pipeline.") and target is None:  # `import pipeline` (version, path) is fine
                bad.append(f"{path.name}: {module} (not a stage)")
            elif target is not None and target not in ALLOWED[stage]:
                bad.append(f"{path.name}: {module}")
            if stage in SERVING | {"tools"} and module.split(".")[0] in TRAINING_STACK:
                bad.append(f"{path.name}: {module} (training stack)")
    assert not bad, f"pipeline/{stage} imports what its stage may not: {bad}"


@pytest.mark.parametrize("adapter", ["stylize_handler.py", "ray_serve.py"])
def test_server_adapters_import_only_the_serving_core(adapter):
    """The TorchServe handler and the Ray Serve deployment are adapters over the same service."""
    used = {m for m, _ in imports(ROOT / "handlers" / adapter) if m.startswith("pipeline")}
    assert used and all(stage_of(m) in SERVING for m in used), used
    assert "pipeline.serve.service" in used or "pipeline.serve.requests" in used
    source = (ROOT / "handlers" / adapter).read_text()
    assert "StyleService" in source and "run_batch" not in source and "prepare(" not in source  # no second pipeline


def test_the_serving_core_imports_no_server():
    """pipeline.serve, .model and .common know neither TorchServe nor Ray: the servers import them, not the reverse."""
    servers = {"ray", "starlette", "fastapi", "ts", "uvicorn"}
    bad = [f"{path.relative_to(ROOT)}: {module}" for stage in sorted(SERVING) for path in sorted((ROOT / "pipeline" / stage).rglob("*.py"))
           for module, _ in imports(path) if module.split(".")[0] in servers]
    assert not bad, bad


@pytest.mark.slow
def test_serving_package_runs_without_the_training_stack(tmp_path_factory, tmp_path):
    """Every module of the serving core (pipeline.serve, .model, .common) imports, and a .pt2 and a .ckpt
    stylize an image, with Lightning, webdataset and torchvision unimportable; same bytes as in this process."""
    run = shared_export(tmp_path_factory)
    photo = tmp_path / "in.png"
    photo.write_bytes(encode_pil(rng_image(29, 41)))
    script = f"""
{BLOCK_TRAINING_DEPS}
import pkgutil, importlib, pipeline.serve, pipeline.model, pipeline.common
from pathlib import Path
for package in (pipeline.serve, pipeline.model, pipeline.common):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
from pipeline.serve.model_io import load_model
from pipeline.tools.stylize import stylize_bytes
for name in ("export/generator.pt2", "checkpoints/last.ckpt"):
    model, _ = load_model(Path({str(run)!r}) / name)
    data, _ = stylize_bytes(model, Path({str(photo)!r}).read_bytes(), {{"format": "png"}})
    Path({str(tmp_path)!r}, name.replace("/", "_") + ".png").write_bytes(data)
assert not {{m.split(".")[0] for m in sys.modules}} & set({sorted(TRAINING_STACK)!r})
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    for name in ("export/generator.pt2", "checkpoints/last.ckpt"):
        model, _ = load_model(run / name)
        expected, _ = stylize_bytes(model, photo.read_bytes(), {"format": "png"})
        assert (tmp_path / (name.replace("/", "_") + ".png")).read_bytes() == expected, name
