"""The starter model committed in models/starter/: its weights against a stored output (a refactor of the
generator, its loader or the package format cannot change what it paints unnoticed), the packaged
format itself, and `make demo` serving it from a fresh working directory with a real TorchServe.

`python tests/test_starter.py --write` rewrites the stored output (only when the weights are retrained).
"""
from __future__ import annotations

import http.client
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.export.package_command import probe_photo
from pipeline.model.checkpoint import generator_from_checkpoint, read_checkpoint
from pipeline.model.generators import build_generator
from pipeline.model.packaged_format import read_packaged, resolve_model, write_packaged
from pipeline.serve.controls import Conditioning, call_model
from pipeline.serve.model_io import load_model

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "models" / "starter" / "generator.safetensors"
EXPECTED = ROOT / "tests" / "fixtures" / "starter_expected.png"
SIDE = 64


def starter_panels() -> np.ndarray:
    """(64, 64·(N+1), 3) uint8: the probe in each style at full strength, then an even mix of all at 0.5."""
    model, _ = load_model("starter")
    controls = model.instyle_controls
    n = len(controls.styles)
    conditions = [Conditioning(tuple(float(i == j) for j in range(n)), 1.0) for i in range(n)]
    conditions.append(Conditioning(tuple(1.0 / n for _ in range(n)), 0.5))
    with torch.inference_mode():
        out = call_model(model, probe_photo(SIDE).expand(len(conditions), -1, -1, -1), conditions, controls)
    panels = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.concatenate(list(panels), axis=1)


def test_starter_paints_what_it_painted_when_committed():
    got = starter_panels().astype(int)
    expected = np.asarray(Image.open(EXPECTED).convert("RGB")).astype(int)
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    # fp32 arithmetic differs a little between CPUs and thread counts (a level at most, seen here)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())
    # and the panels are paintings, not the photo nor each other
    photo = (probe_photo(SIDE)[0].permute(1, 2, 0).numpy() * 255).round()
    for i in range(got.shape[1] // SIDE - 1):
        panel = got[:, i * SIDE:(i + 1) * SIDE]
        assert np.abs(panel - photo).mean() > 20
        assert np.abs(panel - got[:, (i + 1) * SIDE:(i + 2) * SIDE]).mean() > 10


def test_starter_is_small_fp16_and_described():
    ckpt = read_packaged(STARTER)
    assert STARTER.stat().st_size < 3_000_000
    assert ckpt["styles"] and len(ckpt["styles"]) >= 4
    assert ckpt["hyper_parameters"]["strength_control"] is True
    with open(STARTER, "rb") as f:  # the header names the dtypes: every float tensor is F16 on disk
        header = f.read(8 + int.from_bytes(f.read(8)[:8], "little"))
    assert b'"F32"' not in header and b'"F16"' in header


def test_packaged_round_trip_is_the_fp16_rounding_of_the_weights(tmp_path):
    torch.manual_seed(0)
    generator = build_generator("residual", width=8, n_residual=1, n_styles=2, strength=True, strength_version=2)
    state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    ckpt = {"state_dict": state, "hyper_parameters": {"arch": "residual", "width": 8, "n_residual": 1,
                                                      "style_image": "a.jpg,b.jpg", "strength_control": True},
            "styles": ["a", "b"], "global_step": 7}
    path = write_packaged(ckpt, tmp_path / "m" / "generator.safetensors")
    back = read_checkpoint(path)  # the checkpoint reader takes the packaged form too
    assert back["styles"] == ["a", "b"] and back["global_step"] == 7
    for key, value in state.items():  # an independent rounding of each weight to fp16
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(back["state_dict"][key], expected), key
    rebuilt = generator_from_checkpoint(back)
    x = torch.rand(1, 3, 32, 40)
    style = torch.tensor([[0.3, 0.7]])
    with torch.inference_mode():
        assert (rebuilt(x, style) - generator.eval()(x, style)).abs().max() < 5e-3


def test_packaged_errors_are_clear(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="without the 'instyle' description"):
        read_packaged(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_packaged(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="packaged: .*starter"):
        resolve_model("no_such_model")
    assert resolve_model("starter") == STARTER
    with pytest.raises(ValueError, match="a packaged model is a .safetensors file"):
        write_packaged({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "x.pt")


def test_stylize_cli_by_name(tmp_path, capsys):
    """In process (`python -m pipeline` itself: test_stylize.py's entry-point test)."""
    from skimage import data

    from pipeline.__main__ import main as cli

    Image.fromarray(data.chelsea()[::4, ::4]).save(tmp_path / "cat.png")
    assert cli(["stylize", "--model", "starter", "--strength", "0.7", str(tmp_path / "cat.png"), str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == Image.open(tmp_path / "cat.png").size
    capsys.readouterr()
    assert cli(["stylize", "--model", "startr", str(tmp_path / "cat.png"), str(tmp_path / "bad.png")]) == 2
    assert "neither a file nor a packaged model" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.slow
def test_make_demo_serves_the_starter_from_a_fresh_directory(tmp_path):
    """`make demo` as the README shows it, in a working directory of its own (ports of its own)."""
    from pipeline.ops.demo import read_properties
    from pipeline.ops.torchserve_local import derived_config, free_ports

    derived_config(ROOT / "config.properties", tmp_path / "config.properties", tmp_path / "model_store", free_ports(6))
    env = {**os.environ, "TMPDIR": str(tmp_path), "TEMP": str(tmp_path)}  # the launcher's pid file stays here
    python = str(Path(sys.executable))
    try:
        with open(tmp_path / "demo.out", "w") as out:  # a file, not a pipe: the server daemon inherits it
            run = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "demo", f"PY={python}"], cwd=tmp_path, env=env,
                                 stdout=out, stderr=subprocess.STDOUT, timeout=600)
        printed = (tmp_path / "demo.out").read_text()
        assert run.returncode == 0, printed[-4000:]
        assert "curl -s -H" in printed and "/predictions/starter" in printed
        photo = np.asarray(Image.open(tmp_path / "demo" / "photo.jpg")).astype(int)
        outputs = sorted((tmp_path / "demo").glob("*.jpg"))
        assert len(outputs) == 1 + len(read_packaged(STARTER)["styles"])  # the photo and each style
        for path in outputs:
            if path.name != "photo.jpg":
                stylized = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB")).astype(int)
                assert stylized.shape == photo.shape and np.abs(stylized - photo).mean() > 20, path.name
        starter_page_runs_the_webcam(tmp_path, env, python)
    finally:  # `make stop` as a user would; then the server's port must close (Java exits a few seconds later)
        subprocess.run(["make", "-f", str(ROOT / "Makefile"), "stop", f"PY={python}"], cwd=tmp_path, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        port = int(read_properties(tmp_path / "config.properties")["inference_address"].rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and answers(port):
            time.sleep(1)
        assert not answers(port), "make stop left the server running"


def answers(port: int) -> bool:
    """Whether anything answers HTTP on the loopback `port`."""
    from pipeline.ops.torchserve_api import request

    try:
        request(("127.0.0.1", port), "GET", "/ping", timeout=2)
    except (OSError, http.client.HTTPException):
        return False
    return True


def starter_page_runs_the_webcam(work: Path, env: dict[str, str], python: str) -> None:
    """`make web NAME=starter` on the export `make demo` wrote, opened in Chromium: its styles and the
    fake webcam stylized live."""
    from browser_helpers import BROWSER_ARGS, CHROMIUM, ensure_node_modules

    from pipeline.tools.web import start

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: the page's part needs Debian's Chromium (apt-get install chromium)")
    ensure_node_modules()
    run = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "web", "NAME=starter", f"PY={python}"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    from playwright.sync_api import sync_playwright

    httpd, url = start(work / "web" / "dist" / "starter")  # in the working directory, as runs/ and model_store/
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
            page = browser.new_page()
            page.goto(url)
            info = page.evaluate("instyle.ready()")
            assert info["styles"] == read_packaged(STARTER)["styles"] and info["strength"], info
            page.click("#webcam")
            page.wait_for_function("instyle.counter().frames >= 2", timeout=120_000)
            assert page.evaluate("instyle.fps()") > 0
            browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    Image.fromarray(starter_panels()).save(EXPECTED)
    print(f"wrote {EXPECTED}")
