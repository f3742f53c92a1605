"""benchmarks/int8.py on a tiny 3-style model with the strength control: it quantizes the exported
`.onnx`, compares the int8 output with fp32 and times the four paths."""
import json
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def run_dir(tiny_trio: Path) -> Path:
    from pipeline.export.exporter import export_run

    run = tiny_trio.parent.parent
    export_run(run, tiny_trio, formats=["pt2", "onnx"])
    return run


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.jpg")
    return folder


def bench(run: Path, photos: Path, out: Path, *extra: str) -> dict:
    from benchmarks.int8 import main

    assert main(["--run", str(run), "--photos", str(photos), "--limit", "2", "--calibration", "2", "--size", "64",
                 "--threads", "1", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_int8_is_measured_against_fp32_and_fewer_quantized_convolutions_cost_less(run_dir, photos, tmp_path,
                                                                                  no_allocator_tuning):
    every = bench(run_dir, photos, tmp_path / "all.json")
    residual = bench(run_dir, photos, tmp_path / "residual.json", "--convs", "residual")
    for r in (every, residual):
        assert 0 < r["mean_levels"] < r["max_levels"] <= 255  # quantized, so not the fp32 output
        assert 10 < r["psnr_min_db"] <= r["psnr_mean_db"] < 90
        assert set(r["ms"]) == {"onnx-fp32", "onnx-int8", "pt2-fp32", "pt2-bf16"} and min(r["ms"].values()) > 0
    # the full-resolution convolutions left in fp32: a smaller difference to fp32
    assert residual["mean_levels"] < every["mean_levels"] and residual["convs"] == "residual"


def test_too_few_photos_is_a_clear_error(run_dir, photos, tmp_path, capsys, no_allocator_tuning):
    from benchmarks.int8 import main

    with pytest.raises(SystemExit):
        main(["--run", str(run_dir), "--photos", str(photos), "--limit", "3", "--calibration", "2"])
    assert "has 4 photos; --limit + --calibration need 5" in capsys.readouterr().err
