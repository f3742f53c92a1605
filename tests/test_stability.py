"""The flicker metric (pipeline.quality.stability) against known answers: exact crops for integer
pans, √2·σ for independent Gaussian noise, zero for a deterministic model on a still scene."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.model.generators import build_generator
from pipeline.quality.stability import clip_stability, clip_warping_error, synthetic_clip, warp, warping_error


def random_photo(h: int = 80, w: int = 120, seed: int = 0) -> torch.Tensor:
    """Values in [0.25, 0.75]: Gaussian noise of σ ≤ 0.03 is then never clamped (> 8σ from 0 and 1)."""
    return 0.25 + 0.5 * torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def smooth_photo(h: int = 80, w: int = 120) -> torch.Tensor:
    """Low-frequency colour waves: bilinear resampling reproduces them almost exactly."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([0.5 + 0.2 * torch.sin(2 * math.pi * xs / 47 + c) * torch.cos(2 * math.pi * ys / 31 - c)
                        for c in (0.0, 1.0, 2.0)])


@pytest.mark.parametrize("sigma", [0.01, 0.03])
def test_static_scene_noise_floor_is_sqrt2_sigma(sigma):
    frames, affines = synthetic_clip(random_photo(), 8, (48, 64), "static", noise_std=sigma, seed=3)
    assert torch.equal(affines, torch.eye(2, 3).expand(7, 2, 3))
    # Two independent N(0, σ²) draws differ by N(0, 2σ²): RMSE √2·σ (9216 values per pair, 7 pairs: ±1 %).
    assert clip_warping_error(frames, affines) == pytest.approx(math.sqrt(2) * sigma, rel=0.03)


def test_static_scene_without_noise_is_zero_with_and_without_jpeg():
    for quality in (None, 70):  # JPEG is deterministic: the same frame compresses to the same pixels
        frames, affines = synthetic_clip(random_photo(), 5, (48, 64), "static", jpeg_quality=quality)
        assert clip_warping_error(frames, affines) < 1e-6


@pytest.mark.parametrize("pan", [(3.0, 0.0), (-2.0, 0.0), (0.0, 2.0), (2.0, -1.0)])
def test_integer_pan_is_exact_crops_and_mask_drops_entered_pixels(pan):
    photo = random_photo(seed=1)
    dx, dy = int(pan[0]), int(pan[1])
    frames, affines = synthetic_clip(photo, 6, (40, 60), "pan", pan=pan)
    # Independent answer: one photo pixel per frame pixel, so frame t is a crop of the photo moved t·(dx, dy).
    x0 = 0 if dx >= 0 else 120 - 60  # a leftward pan starts at the photo's right edge
    y0 = 0 if dy >= 0 else 80 - 40
    for t in range(6):
        crop = photo[:, y0 + t * dy: y0 + t * dy + 40, x0 + t * dx: x0 + t * dx + 60]
        assert torch.allclose(frames[t], crop, atol=1e-5), t
    assert torch.allclose(affines, torch.tensor([[1.0, 0.0, -dx], [0.0, 1.0, -dy]]).expand(5, 2, 3), atol=1e-9)
    assert clip_warping_error(frames, affines, erode=0) < 1e-5
    assert clip_warping_error(frames, affines, erode=2) < 1e-5

    entered = torch.zeros(40, 60, dtype=torch.bool)  # what came into view: dx columns and dy rows
    if dx > 0:
        entered[:, 60 - dx:] = True
    if dx < 0:
        entered[:, :-dx] = True
    if dy > 0:
        entered[40 - dy:, :] = True
    if dy < 0:
        entered[:-dy, :] = True
    _, valid = warp(frames[:1], affines[:1], erode=0)
    assert torch.equal(~valid[0, 0], entered)
    _, valid1 = warp(frames[:1], affines[:1], erode=1)  # one more column/row along the seam
    grown = torch.nn.functional.max_pool2d(entered[None, None].float(), 3, 1, 1)[0, 0] > 0
    assert torch.equal(~valid1[0, 0], grown)


def test_wrong_motion_gives_a_clearly_larger_error():
    frames, affines = synthetic_clip(random_photo(seed=2), 6, (40, 60), "pan", pan=(2.0, 1.0), noise_std=0.01)
    right = clip_warping_error(frames, affines)
    off_by_one = affines.clone()
    off_by_one[:, 0, 2] += 1.0
    still = torch.eye(2, 3).expand(5, 2, 3)
    assert right == pytest.approx(math.sqrt(2) * 0.01, rel=0.05)
    assert clip_warping_error(frames, off_by_one) > 5 * right
    assert clip_warping_error(frames, still) > 5 * right


def test_zoom_in_sees_everything_zoom_out_reveals_a_border():
    photo = smooth_photo()
    frames, affines = synthetic_clip(photo, 6, (40, 60), "zoom", zoom=1.03)
    assert torch.allclose(affines[:, 0, 0], torch.full((5,), 1.03), atol=1e-6)
    _, valid = warp(frames[:-1], affines, erode=0)
    assert bool(valid.all())  # moving in: every pixel of t+1 was inside frame t
    right = clip_warping_error(frames, affines)
    wrong = clip_warping_error(frames, torch.eye(2, 3).expand(5, 2, 3))
    assert right < 3e-3 and wrong > 5 * right  # smooth photo: resampling twice costs little (0.002 vs 0.018)
    out, affines_out = synthetic_clip(photo, 6, (40, 60), "zoom", zoom=1 / 1.03)
    _, valid = warp(out[:-1], affines_out, erode=0)
    edge = ~valid[0, 0]
    assert edge[0].all() and edge[-1].all() and edge[:, 0].all() and edge[:, -1].all() and not edge[20, 30]
    assert clip_warping_error(out, affines_out) < 3e-3


def test_jpeg_recompression_adds_a_small_error_on_a_pan():
    frames, affines = synthetic_clip(smooth_photo(), 6, (40, 60), "pan", pan=(2.0, 0.0), jpeg_quality=60)
    err = clip_warping_error(frames, affines)
    assert 1e-3 < err < 0.03  # blocks move with the grid, the content does not: some error, far below any flicker


def test_clip_stability_identity_noise_and_a_real_generator():
    frames, affines = synthetic_clip(random_photo(), 6, (32, 48), "pan", pan=(2.0, 1.0), noise_std=0.01)
    same = clip_stability(lambda x: x, frames, affines)
    assert same["output"] == same["input"]
    gen = torch.Generator().manual_seed(7)
    noisy = clip_stability(lambda x: (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1), frames, affines)
    assert noisy["input"] == same["input"]
    # Per-frame noise of 0.05 on top: RMSE ≈ √(2·0.01² + 2·0.05²) (clamping trims a little).
    assert noisy["output"] == pytest.approx(math.sqrt(2 * 0.01 ** 2 + 2 * 0.05 ** 2), rel=0.1)
    # A real (untrained) instance-norm generator is deterministic: on a still, noise-free scene the
    # stylized frames are identical, so its warping error is 0 whatever it draws.
    torch.manual_seed(0)
    generator = build_generator("residual", norm="instance", padding="reflect", width=8, n_residual=1).eval()
    still, eye = synthetic_clip(random_photo(), 4, (32, 48), "static")
    assert clip_stability(generator, still, eye, batch=3)["output"] < 1e-6


def test_bad_arguments_are_refused():
    photo = random_photo()
    with pytest.raises(ValueError, match="motion"):
        synthetic_clip(photo, 4, (16, 16), "spin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="photo must be"):
        synthetic_clip(photo[0], 4, (16, 16))
    with pytest.raises(ValueError, match="2 frames"):
        synthetic_clip(photo, 1, (16, 16))
    frames, affines = synthetic_clip(photo, 4, (16, 16), "pan")
    with pytest.raises(ValueError, match="affine maps"):
        clip_warping_error(frames, affines[:2])
    with pytest.raises(ValueError, match="shapes differ"):
        warping_error(frames[:2], frames[1:], affines[:2])
    with pytest.raises(ValueError, match="returned"):
        clip_stability(lambda x: x[:, :, :8], frames, affines)
