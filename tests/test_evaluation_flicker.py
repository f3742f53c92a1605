"""The flicker metric in `evaluate` (pipeline.quality.stability.photo_flicker) against independent
computations: the documented clips rebuilt here by hand, the identity model at exactly its floor,
fresh per-frame noise adding in quadrature, and the CLI's style options reaching the frames."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.__main__ import main as cli
from pipeline.quality.evaluate import conditioned_model, evaluate
from pipeline.loss.losses import build_loss
from pipeline.quality.stability import clip_warping_error, photo_flicker, synthetic_clip
from pipeline.common.image_sources import image_files, load_style
from pipeline.serve.model_io import load_model
from serving_helpers import make_checkpoint

SIZE = 48  # short side the photos are evaluated at


@pytest.fixture(scope="module")
def loss(style_image, vgg_weights):
    return build_loss(load_style(style_image, 64))


@pytest.fixture()
def photos(tmp_path) -> Path:
    """Two 4:3 photos (48×64 as evaluated: the pan then fits at one photo pixel per frame pixel) with
    values in [64, 192]: noise of σ 0.01–0.02 is then never clamped."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i, (h, w) in enumerate(((48, 64), (60, 80))):
        Image.fromarray((64 + 128 * rng.random((h, w, 3))).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def resized(path: Path) -> torch.Tensor:
    """The photo at short side SIZE, as evaluate sees it (bilinear, antialiased), (3, H, W)."""
    x = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    h, w = x.shape[2:]
    s = SIZE / min(h, w)
    return F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)[0]


@pytest.mark.slow
def test_identity_sits_on_its_floor_and_the_floor_is_the_documented_clip(loss, photos, tmp_path):
    result = evaluate(lambda x: x, loss, image_files(photos), size=SIZE, out=tmp_path / "out", flicker=1)
    first, second = result["images"]
    assert "flicker_ratio" in first and "flicker_ratio" not in second  # only the first `flicker` photos
    for motion in ("pan", "zoom"):
        m = first["flicker"][motion]
        assert m["output"] == m["input"] and m["ratio"] == 1.0
    assert first["flicker_ratio"] == 1.0 and result["mean"]["flicker_ratio"] == 1.0
    # Rebuilt by hand from the documented settings (8 frames, 3/4 of the photo per side, σ 0.01, JPEG q90;
    # pan (2, 1) px per frame with seed 0, zoom 1.02 per frame with seed 1, photo 0's seeds).
    x = resized(photos / "img0.png")
    size = (round(0.75 * x.shape[1]), round(0.75 * x.shape[2]))
    clips = {"pan": dict(motion="pan", pan=(2.0, 1.0), seed=0), "zoom": dict(motion="zoom", zoom=1.02, seed=1)}
    for motion, kw in clips.items():
        frames, affines = synthetic_clip(x, 8, size, noise_std=0.01, jpeg_quality=90, **kw)
        assert first["flicker"][motion]["input"] == pytest.approx(clip_warping_error(frames, affines), rel=2e-3)
        # Independent noise of σ 0.01 alone differs by √2·σ between frames; JPEG only adds to it.
        assert first["flicker"][motion]["input"] > 0.95 * math.sqrt(2) * 0.01
    assert first["flicker_input"] == pytest.approx(np.mean([first["flicker"][m]["input"] for m in clips]), rel=1e-9)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["flicker"]["photos"] == 1 and saved["flicker"]["noise_std"] == 0.01
    assert saved["mean"]["flicker_input"] == pytest.approx(first["flicker_input"])  # the mean of the one photo
    assert saved["mean"]["total"] == pytest.approx((first["total"] + second["total"]) / 2)  # still over both
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("(floor ") == 1 and "flicker (first 1 photos)" in page
    off = evaluate(lambda x: x, loss, image_files(photos), size=SIZE, out=tmp_path / "off", flicker=0)
    assert off["flicker"] is None and not any("flicker" in k for k in off["mean"])


def test_fresh_noise_per_frame_adds_in_quadrature(loss, photos, tmp_path):
    def blur(x: torch.Tensor) -> torch.Tensor:  # deterministic, and it averages the clips' noise away
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)

    sigma, gen = 0.02, torch.Generator().manual_seed(5)

    def noisy(x: torch.Tensor) -> torch.Tensor:  # the same model plus noise drawn afresh for every frame
        return blur(x) + sigma * torch.randn(x.shape, generator=gen)

    steady = evaluate(blur, loss, image_files(photos), size=SIZE, out=tmp_path / "a", flicker=2)
    shaky = evaluate(noisy, loss, image_files(photos), size=SIZE, out=tmp_path / "b", flicker=2)
    for s, n in zip(steady["images"], shaky["images"]):
        assert n["flicker_input"] == s["flicker_input"]  # same clips
        assert s["flicker_ratio"] < 1  # a 3×3 mean divides independent per-pixel noise by 3
        assert n["flicker_ratio"] > s["flicker_ratio"] * 1.3
        # Integer-pixel pan: the warp moves the noise unchanged, so each pair gains two independent
        # N(0, σ²) draws: RMSE² grows by 2σ² (values in [0.25, 0.75]: never clamped).
        pan = s["flicker"]["pan"]["output"]
        assert n["flicker"]["pan"]["output"] == pytest.approx(math.sqrt(pan ** 2 + 2 * sigma ** 2), rel=0.03)
    assert shaky["mean"]["flicker_ratio"] == pytest.approx(np.mean([r["flicker_ratio"] for r in shaky["images"]]))


@pytest.mark.slow
def test_cli_measures_the_requested_style(tmp_path, photos, style_image, vgg_weights, capsys):
    ckpt = make_checkpoint(tmp_path / "runs" / "duo", styles=["a", "b"], strength=True, width=8, n_residual=1,
                           style_size=64)
    args = ["evaluate", "--model", str(ckpt), "--content", str(photos), "--style", str(style_image),
            "--size", str(SIZE), "--limit", "1"]
    assert cli(args + ["--flicker", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--flicker -1" in capsys.readouterr().err
    assert cli(args + ["--flicker", "1", "--style_name", "b", "--strength", "0.5", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    row = json.loads((tmp_path / "b" / "metrics.json").read_text())["images"][0]
    assert f"flicker {row['flicker_output']:.4f} (floor {row['flicker_input']:.4f}" in printed
    net = load_model(ckpt)[0]
    x = resized(photos / "img0.png")
    want_b = photo_flicker(conditioned_model(net, "b", 0.5)[0], x, seed=0)
    want_a = photo_flicker(conditioned_model(net, "a", 1.0)[0], x, seed=0)
    assert row["flicker_output"] == pytest.approx(want_b["flicker_output"], rel=2e-3)
    assert abs(want_a["flicker_output"] - want_b["flicker_output"]) > 10 * 2e-3 * want_b["flicker_output"]
