"""benchmarks/web_fps.py on a tiny 3-style model: the page's webcam frames/s measured with and without
cross-origin isolation, the table and JSON written, and the screenshot option."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from browser_helpers import CHROMIUM, ensure_node_modules

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tiny_trio: Path) -> Path:
    from pipeline.export.exporter import export_run

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: the browser tests need Debian's Chromium (apt-get install chromium)")
    ensure_node_modules()
    run = tiny_trio.parent.parent
    export_run(run, tiny_trio, formats=["onnx"])
    return run


def test_frames_per_second_with_and_without_isolation(run_dir, tmp_path, capsys):
    from benchmarks.web_fps import main

    out = tmp_path / "fps.json"
    assert main(["--runs", str(run_dir), "--seconds", "1", "--warmup", "1", "--min_frames", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["run"], r["isolated"]) for r in rows] == [("trio", True), ("trio", False)]
    for r in rows:
        assert r["backend"] == "wasm" and r["frame"] == "640x360" and r["width"] == 8 and r["styles"] == 3
        assert r["frames"] >= 2 and r["seconds"] >= 1 and r["fps"] == pytest.approx(r["frames"] / r["seconds"], rel=0.01)
    assert rows[1]["threads"] == 1 and rows[0]["threads"] >= 1
    assert result["machine"]["onnxruntime_web"] == "1.30.0" and result["machine"]["chromium"]
    assert "| trio | 8 | 3 |" in capsys.readouterr().out and rows[0]["fps_each"] == [rows[0]["fps"]]


def test_the_screenshot_shows_the_page(run_dir, tmp_path):
    from benchmarks.web_fps import main

    path = tmp_path / "page.png"
    assert main(["--runs", str(run_dir), "--screenshot", str(path), "--style", "a:0.5,c:0.5", "--strength", "0.6"]) == 0
    with Image.open(path) as image:
        assert image.mode == "P" and image.width == 1100 and image.height >= 500  # palette PNG, the page's width


def test_a_run_without_onnx_is_named(tmp_path, capsys):
    from benchmarks.web_fps import main

    (tmp_path / "runs" / "bare" / "export").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["--runs", str(tmp_path / "runs" / "bare"), "--out", str(tmp_path / "x.json")])
    assert "export the run with ONNX first" in capsys.readouterr().err
