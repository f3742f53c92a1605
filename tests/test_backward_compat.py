"""Models made before multi-style and strength still load, export, serve and resume.

tests/fixtures/v0_single_style/ was written by the code of commit 9a84f7c (the last one before
conditional instance norm), not by hand: `python -m pipeline fit` (width 8, one residual block,
style skimage:coffee, 4 steps: a real Lightning checkpoint with every key Lightning adds), then
`python -m pipeline export --formats '[pt,pt2]'`, and `expected.png` is that code's
`python -m pipeline stylize` of `photo.png` (the .ckpt, .pt and .pt2 gave the same bytes)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.export.exporter import export_run
from pipeline.serve.controls import ModelControls
from pipeline.serve.model_io import load_model
from pipeline.tools.stylize import stylize_bytes
from serving_helpers import decode_pil, load_handler, run_handler, ts_request

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v0_single_style"


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_pil(data))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["last.ckpt", "generator.pt", "generator.pt2"])
def test_old_files_load_as_one_style_without_strength_and_give_the_same_pixels(name):
    model, meta = load_model(FIXTURE / name)
    assert model.instyle_controls == ModelControls(("coffee",), strength=False)
    assert "styles" not in meta or meta["styles"] == ["coffee"]
    photo = (FIXTURE / "photo.png").read_bytes()
    assert np.array_equal(pixels(stylize_bytes(model, photo, {})[0]), pixels((FIXTURE / "expected.png").read_bytes()))
    assert np.array_equal(pixels(stylize_bytes(model, photo, {"style": "coffee", "strength": "1"})[0]),
                          pixels((FIXTURE / "expected.png").read_bytes()))


@pytest.mark.slow
def test_old_checkpoint_exports_with_the_new_exporter(tmp_path):
    run = tmp_path / "v0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes((FIXTURE / "last.ckpt").read_bytes())
    written = export_run(run)  # every format verified against eager on the way
    meta = json.loads(written["metadata"].read_text())
    assert meta["styles"] == ["coffee"] and meta["strength_control"] is False
    assert "n_styles" not in meta["generator_kwargs"] and "strength" not in meta["generator_kwargs"]
    photo = (FIXTURE / "photo.png").read_bytes()
    for fmt in ("pt", "pt2", "onnx"):
        model, _ = load_model(written[fmt])
        got = pixels(stylize_bytes(model, photo, {})[0]).astype(int)
        assert np.abs(got - pixels((FIXTURE / "expected.png").read_bytes())).max() <= 1, fmt


@pytest.mark.slow
def test_old_export_serves_and_refuses_styles_it_does_not_have():
    handler, context = load_handler(FIXTURE, "generator.pt2")
    photo = (FIXTURE / "photo.png").read_bytes()
    results = run_handler(handler, context, [
        ts_request(photo, rid="a"), ts_request(photo, headers={"X-Style": "coffee"}, rid="b"),
        ts_request(photo, headers={"X-Style": "udnie"}, rid="c"), ts_request(photo, headers={"X-Strength": "0.5"}, rid="d")])
    expected = pixels((FIXTURE / "expected.png").read_bytes())
    for status, ctype, body in results[:2]:
        assert (status, ctype) == (200, "image/png") and np.array_equal(pixels(body), expected)
    for (status, _, body), message in zip(results[2:], ("unknown style 'udnie'", "without the strength control")):
        err = json.loads(body)
        assert status == 400 and message in err["error"] and err["styles"] == ["coffee"]


@pytest.mark.slow
def test_old_checkpoint_loads_into_the_training_module(vgg_weights):
    from pipeline.train.module import StyleTransferModule

    module = StyleTransferModule.load_from_checkpoint(FIXTURE / "last.ckpt", weights_only=True).eval()
    assert module.style_names == ["coffee"] and not module.conditioned
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(module._terms(x)["total"])


@pytest.mark.slow
def test_resuming_an_old_run_with_the_new_presets_says_which_flag_to_pass(tmp_path, vgg_weights):
    """The presets now turn the strength control on; an old run resumed with them gets a clear error
    naming the flag, and resumes with it."""
    import subprocess
    import sys

    from data_helpers import write_case
    from train_helpers import TINY

    data = write_case(tmp_path / "shards", 1)
    cmd = [sys.executable, "-m", "pipeline", "fit", *TINY, "--model.style_image=skimage:coffee", "--model.width=8",
           "--model.n_residual=1", f"--data.data_dir={data}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
           "--trainer.max_steps=6", "--data.steps_per_epoch=2", f"--ckpt_path={FIXTURE / 'last.ckpt'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "--model.strength_control=false" in res.stderr, res.stderr[-2000:]
    res = subprocess.run(cmd + ["--model.strength_control=false"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "runs" / "default" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["styles"] == ["coffee"]
