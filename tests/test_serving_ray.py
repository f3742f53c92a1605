"""The second serving engine against the first: `make serve ENGINE=ray` (the README's commands, a real
one-node Ray cluster, handlers/ray_serve.py) and a real TorchServe serving the same export get the same
requests, and must give the same statuses, content types and bytes: images, the handler's JSON errors,
the frontend's refusals (token, unknown model), the describe API; then `make stop ENGINE=ray` ends it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.export.archive import archive_run
from pipeline.ops.torchserve_api import read_keys, request
from pipeline.ops.torchserve_local import TORCHSERVE, LocalTorchServe, free_ports, multipart
from pipeline.export.exporter import export_run
from serving_helpers import decode_pil, encode_pil, make_checkpoint, rng_image, shared_export

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None or not TORCHSERVE.exists(), reason="needs Java and torchserve")]


def form(fields: list[tuple[str, str | None, bytes, str]]) -> tuple[bytes, str]:
    """A multipart body of several fields (name, filename or None, value, content type) and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, filename, value, ctype in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def as_form(body_and_type: tuple[bytes, str]) -> tuple[bytes, dict[str, str]]:
    return body_and_type[0], {"Content-Type": body_and_type[1]}


def make(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), f"PY={sys.executable}", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_ray_serve_answers_as_torchserve_does(tmp_path_factory, tmp_path):
    run = shared_export(tmp_path_factory)
    store = tmp_path / "model_store"
    archive_run(run, store, name="demo")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(run)
    duo = tmp_path / "runs" / "duo"  # two styles and the strength control: the README's X-Strength line
    make_checkpoint(duo, styles=["mosaic", "candy"], strength=True, width=16)
    export_run(duo, formats=("pt2",))
    archive_run(duo, store, name="duo")
    (port,) = free_ports(1)
    ts = LocalTorchServe(tmp_path / "ts", store)
    ts.start()
    started = make(tmp_path, "serve", "ENGINE=ray", "NAME=demo,duo", f"ARGS=--port {port}")
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert f"127.0.0.1:{port}" in started.stdout and "curl" in started.stdout
        config = (tmp_path / "logs" / "ray-serve.yaml").read_text()
        keys = read_keys(tmp_path / "key_file.json")
        assert keys["inference"] not in config and oct((tmp_path / "key_file.json").stat().st_mode)[-3:] == "600"
        ts.wait_ready(["demo", "duo"])

        def both(method: str, path: str, body: bytes | None, headers: dict, token: str | None = "inference"):
            want = ts.request(method, path, body, headers, token=token)
            got = request(("127.0.0.1", port), method, path, body, headers, keys[token] if token else None)
            return want, got

        jpeg = encode_pil(rng_image(37, 53, seed=11), "JPEG", quality=90)
        rgba = encode_pil(rng_image(31, 50, channels=4, seed=12))
        grey = encode_pil(rng_image(40, 29, seed=13), "PNG", mode="L")
        cases = {
            "raw jpeg": ("/predictions/demo", jpeg, {"Content-Type": "image/jpeg"}),
            "the README's line": ("/predictions/duo", jpeg, {"Content-Type": "image/jpeg", "X-Strength": "0.6"}),
            "a mix of styles": ("/predictions/duo", jpeg, {"Content-Type": "image/jpeg", "X-Style": "mosaic:0.3,candy:0.7",
                                                           "X-Strength": "0.25"}),
            "strength out of range": ("/predictions/duo", jpeg, {"Content-Type": "image/jpeg", "X-Strength": "2"}),
            "no strength control": ("/predictions/demo", jpeg, {"Content-Type": "image/jpeg", "X-Strength": "0.5"}),
            "multipart alpha": ("/predictions/demo", *as_form(multipart("image", "cut.png", rgba, "image/png"))),
            "grey png": ("/predictions/demo", grey, {"Content-Type": "image/png"}),
            "jpeg out by header": ("/predictions/demo", jpeg, {"Content-Type": "application/octet-stream", "X-Format": "jpeg",
                                                               "X-Quality": "80", "X-Preserve-Color": "true"}),
            "webp by query": ("/invocations?model_name=demo&format=webp&max_side=20", jpeg, {"Content-Type": "image/jpeg"}),
            "options as fields": ("/predictions/demo", *as_form(form([("image", "a.png", rgba, "image/png"),
                                                                       ("format", None, b"jpeg", "text/plain"),
                                                                       ("style", None, b"mosaic", "text/plain")]))),
            "not an image": ("/predictions/demo", b"this is not an image", {"Content-Type": "image/png"}),
            "bad format": ("/predictions/demo", jpeg, {"Content-Type": "image/jpeg", "X-Format": "gif"}),
            "unknown style": ("/predictions/demo", jpeg, {"Content-Type": "image/jpeg", "X-Style": "nope"}),
            "two images": ("/predictions/demo", *as_form(form([("a", "a.png", rgba, "image/png"), ("b", "b.png", grey, "image/png")]))),
            "text body": ("/predictions/demo", b"hello", {"Content-Type": "text/plain"}),
            "unknown model": ("/predictions/nope", jpeg, {"Content-Type": "image/jpeg"}),
        }
        seen = set()
        for name, (path, body, headers) in cases.items():
            (status, ctype, want), (got_status, got_ctype, got) = both("POST", path, body, headers)
            seen.add(status)
            assert (got_status, got_ctype.split(";")[0]) == (status, ctype.split(";")[0]), (name, got[:300], want[:300])
            if status == 200 or ctype.startswith("application/json") and b'"styles"' in want:  # images, the handler's errors
                assert got == want, name
            else:  # the frontend's own refusals: the same status and kind of error
                assert json.loads(got)["code"] == json.loads(want)["code"] == status, name
        assert {200, 400, 404, 415} <= seen
        # the one documented difference (docs/serving.md, Requests): TorchServe's frontend parses a form-urlencoded
        # body and may fail with its own 500 before the handler's 415; the Ray gateway always gives the 415
        (status, _, _), (got_status, _, got) = both("POST", "/predictions/demo", jpeg,
                                                    {"Content-Type": "application/x-www-form-urlencoded"})
        assert status in (415, 500) and got_status == 415 and b"x-www-form-urlencoded" in got
        assert decode_pil(both("POST", "/predictions/demo", rgba, {"Content-Type": "image/png"})[1][2]).mode == "RGBA"

        for token in (None, "wrong"):  # token auth on: none or a wrong one is refused by both
            ts.keys["wrong"], keys["wrong"] = "not-the-key", "not-the-key"
            (status, _, _), (got_status, _, got) = both("POST", "/predictions/demo", jpeg, {"Content-Type": "image/jpeg"}, token)
            assert 400 <= status < 500 and got_status == status and b"Token Authorization failed" in got

        # describe: TorchServe's management API and the Ray gateway's, both with the management key
        _, _, want = ts.request("GET", "/models/demo?customized=true", port=ts.management, token="management")
        status, _, got = request(("127.0.0.1", port), "GET", "/models/demo?customized=true", token=keys["management"])
        described = {k: v for k, v in json.loads(got)[0]["customizedMetadata"].items() if k != "node"}
        assert status == 200 and described == json.loads(want)[0]["customizedMetadata"]
        assert request(("127.0.0.1", port), "GET", "/models/demo", token=keys["inference"])[0] == 400
        assert request(("127.0.0.1", port), "GET", "/ping")[:1] == (200,)
        for method, path, status in (("DELETE", "/predictions/demo", 405), ("GET", "/nowhere", 404)):
            got_status, _, body = request(("127.0.0.1", port), method, path, token=keys["inference"])
            assert got_status == json.loads(body)["code"] == status, (method, path, body)

        # batching by size: concurrent requests of two sizes, each answered as TorchServe answers it alone
        images = [encode_pil(rng_image(*hw, seed=20 + i)) for i, hw in enumerate([(37, 53), (64, 64)] * 3)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda d: request(("127.0.0.1", port), "POST", "/predictions/demo", d,
                                                      {"Content-Type": "image/png"}, keys["inference"]), images))
        for data, (status, _, body) in zip(images, answers):
            assert status == 200 and body == ts.request("POST", "/predictions/demo", data, {"Content-Type": "image/png"})[2]
    finally:
        daemon = json.loads((tmp_path / "logs" / "ray-serve.json").read_text())["pid"] if started.returncode == 0 else -1
        stopped = make(tmp_path, "stop", "ENGINE=ray")
        ts.stop()
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not (tmp_path / "logs" / "ray-serve.json").exists()
    with pytest.raises(OSError):
        request(("127.0.0.1", port), "GET", "/ping", timeout=5)
    with pytest.raises(ProcessLookupError):  # the cluster's daemon (and with it Ray's processes) is gone
        os.kill(daemon, 0)
