"""Temporal stability (flicker) of a stylization model, on clips whose motion is known exactly.

A video model flickers when the same scene point is stylized differently from one frame to the
next. With real footage the motion has to be estimated (optical flow), and the estimate's errors
mix with the model's. Here the clip is made: a virtual camera pans or zooms over a still photo,
each frame sampled from the photo by an affine map (bilinear `grid_sample`), so the true motion
between frames is that affine map, exactly. Per-frame Gaussian sensor noise and JPEG
re-compression make the input clip as unsteady as real footage.

Metric: `warping_error` warps frame t by the known motion into frame t+1's coordinates and takes
the RMSE against frame t+1 over RGB in [0, 1], on the pixels frame t saw (a validity mask:
an all-ones image warped the same way, exactly 1 where all bilinear taps were inside frame t,
then eroded so the seam next to newly entered pixels is left out too), averaged over consecutive
pairs. RMSE because the noise floor then has a closed form: two frames with independent noise σ
differ by √2·σ. `clip_stability` reports it for the stylized clip and for the input clip itself
(the floor a perfectly stable model that reproduces its input would reach). `photo_flicker` is what
`python -m pipeline evaluate` reports per photo: a pan and a zoom with realistic noise and JPEG
(FLICKER_* below), the output's error, the input's, and output / input.

Coordinates: pixel centres, (x, y) = (column, row); an `affine` is (2, 3), mapping frame-t
coordinates (x, y, 1) to frame-(t+1) coordinates.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Motion = Literal["pan", "zoom", "static"]


def _homogeneous(m: torch.Tensor) -> torch.Tensor:
    """(..., 2, 3) → (..., 3, 3) with the row (0, 0, 1)."""
    last = torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype).expand(*m.shape[:-2], 1, 3)
    return torch.cat([m, last], dim=-2)


def _sample(image: torch.Tensor, coords: torch.Tensor, padding: str) -> torch.Tensor:
    """Bilinear samples of (N, C, H, W) `image` at (N, h, w, 2) pixel-centre coordinates (x, y)."""
    h_in, w_in = image.shape[-2:]
    scale = torch.tensor([2.0 / max(w_in - 1, 1), 2.0 / max(h_in - 1, 1)], dtype=coords.dtype)
    grid = (coords * scale - 1.0).to(image.dtype)  # align_corners=True: -1 and 1 are the corner pixel centres
    return F.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def _pixel_grid(h: int, w: int) -> torch.Tensor:
    """(h, w, 3) homogeneous pixel-centre coordinates (x, y, 1), float64."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)


def _cameras(n: int, size: tuple[int, int], photo_size: tuple[int, int], motion: Motion,
             pan: tuple[float, float], zoom: float) -> torch.Tensor:
    """(n, 3, 3) maps from frame pixel coordinates to photo pixel coordinates, every view inside the photo."""
    (h, w), (ph, pw) = size, photo_size
    fit = min((pw - 1) / (w - 1), (ph - 1) / (h - 1))  # largest photo-px-per-frame-px that still fits
    t = torch.arange(n, dtype=torch.float64)
    cams = torch.zeros(n, 3, 3, dtype=torch.float64)
    cams[:, 2, 2] = 1.0
    if motion == "pan":  # `pan` frame pixels per frame; scale ≤ 1 photo px per frame px so the path fits
        dx, dy = pan
        s = min(1.0, (pw - 1) / ((w - 1) + (n - 1) * abs(dx)), (ph - 1) / ((h - 1) + (n - 1) * abs(dy)))
        x0 = 0.0 if dx >= 0 else (pw - 1) - s * (w - 1)
        y0 = 0.0 if dy >= 0 else (ph - 1) - s * (h - 1)
        cams[:, 0, 0] = cams[:, 1, 1] = s
        cams[:, 0, 2], cams[:, 1, 2] = x0 + s * dx * t, y0 + s * dy * t
    elif motion in ("zoom", "static"):  # about the photo's centre; zoom > 1 moves in, < 1 out
        if motion == "static":
            s = torch.full_like(t, min(1.0, fit))
        elif zoom > 0:
            s = fit * min(1.0, zoom) ** (n - 1) / zoom ** t  # the clip's widest view is exactly `fit`
        else:
            raise ValueError(f"zoom={zoom}: give a scale factor per frame > 0")
        cams[:, 0, 0] = cams[:, 1, 1] = s
        cams[:, 0, 2] = (pw - 1) / 2 - s * (w - 1) / 2
        cams[:, 1, 2] = (ph - 1) / 2 - s * (h - 1) / 2
    else:
        raise ValueError(f"motion={motion!r}: use 'pan', 'zoom' or 'static'")
    return cams


def synthetic_clip(photo: torch.Tensor, n_frames: int, out_size: tuple[int, int], motion: Motion = "pan",
                   noise_std: float = 0.0, jpeg_quality: int | None = None, seed: int = 0,
                   pan: tuple[float, float] = (2.0, 1.0), zoom: float = 1.02) -> tuple[torch.Tensor, torch.Tensor]:
    """A virtual camera over a still (3, H, W) photo in [0, 1]: frames (T, 3, h, w) in [0, 1] and the
    true per-step motion (T-1, 2, 3) (frame-t → frame-(t+1) pixel coordinates).

    `pan`: (dx, dy) frame pixels per frame (at one photo pixel per frame pixel when the photo is large
    enough: integer steps then sample the photo's own pixels); `zoom`: scale per frame about the centre.
    Then per frame: Gaussian noise of `noise_std` (clamped to [0, 1]) and, if `jpeg_quality` is given,
    an 8-bit JPEG round trip through Pillow."""
    if photo.dim() != 3 or photo.shape[0] != 3:
        raise ValueError(f"photo must be (3, H, W), got {tuple(photo.shape)}")
    h, w = out_size
    if n_frames < 2 or h < 2 or w < 2 or min(photo.shape[1:]) < 2:
        raise ValueError(f"need ≥ 2 frames of ≥ 2×2 pixels from a ≥ 2×2 photo (got {n_frames} frames of {w}×{h})")
    if noise_std < 0 or (jpeg_quality is not None and not 1 <= jpeg_quality <= 100):
        raise ValueError(f"noise_std={noise_std} must be ≥ 0 and jpeg_quality={jpeg_quality} in 1..100")
    cams = _cameras(n_frames, (h, w), (photo.shape[1], photo.shape[2]), motion, pan, zoom)
    coords = torch.einsum("tij,hwj->thwi", cams[:, :2], _pixel_grid(h, w))
    frames = _sample(photo.float()[None].expand(n_frames, -1, -1, -1), coords, "border")
    gen = torch.Generator().manual_seed(seed)
    if noise_std > 0:
        frames = frames + noise_std * torch.randn(frames.shape, generator=gen)
    frames = frames.clamp(0, 1)
    if jpeg_quality is not None:
        frames = torch.stack([_jpeg(f, jpeg_quality) for f in frames])
    steps = torch.linalg.inv(cams[1:]) @ cams[:-1]  # frame t → photo → frame t+1
    return frames.contiguous(), steps[:, :2].float()


def _jpeg(frame: torch.Tensor, quality: int) -> torch.Tensor:
    arr = frame.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(back.copy()).permute(2, 0, 1).float().div(255)


def warp(frames: torch.Tensor, affine: torch.Tensor, erode: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, h, w) frames warped into the next frames' coordinates by (N, 2, 3) `affine`, and the
    (N, 1, h, w) bool mask of pixels the frames saw (eroded by `erode` px around newly entered ones)."""
    if frames.dim() != 4 or affine.shape != (frames.shape[0], 2, 3):
        raise ValueError(f"frames (N, C, h, w) and affine (N, 2, 3) expected, got {tuple(frames.shape)}, "
                         f"{tuple(affine.shape)}")
    h, w = frames.shape[-2:]
    back = torch.linalg.inv(_homogeneous(affine.double()))[:, :2]  # frame t+1 pixel → where it was in frame t
    coords = torch.einsum("nij,hwj->nhwi", back, _pixel_grid(h, w))
    warped = _sample(frames, coords, "zeros")
    ones = _sample(torch.ones(frames.shape[0], 1, h, w, dtype=frames.dtype), coords, "zeros")
    valid = ones >= 1 - 1e-4  # every bilinear tap inside frame t (float rounding aside)
    if erode > 0:  # min-pool of the mask; outside the frame counts as valid (only the entered seam is dropped)
        k = 2 * erode + 1
        valid = -F.max_pool2d(-valid.float(), k, stride=1, padding=erode) > 0.5
    return warped, valid


def warping_error(frames_t: torch.Tensor, frames_t1: torch.Tensor, affine: torch.Tensor, erode: int = 1) -> float:
    """RMSE over RGB in [0, 1] between frames t warped by the known motion `affine` (N, 2, 3) and frames
    t+1, on the pixels both saw; the mean over the N pairs. 0 = perfectly stable."""
    if frames_t.shape != frames_t1.shape:
        raise ValueError(f"frame shapes differ: {tuple(frames_t.shape)} vs {tuple(frames_t1.shape)}")
    warped, valid = warp(frames_t.double(), affine, erode)
    errors = []
    for i in range(frames_t.shape[0]):
        mask = valid[i].expand_as(warped[i])
        if not bool(mask.any()):
            raise ValueError(f"pair {i}: no pixel of frame t is visible in frame t+1")
        errors.append(math.sqrt((warped[i] - frames_t1[i].double())[mask].pow(2).mean().item()))
    return float(np.mean(errors))


def clip_warping_error(frames: torch.Tensor, affines: torch.Tensor, erode: int = 1) -> float:
    """`warping_error` of every consecutive pair of a (T, 3, h, w) clip with its (T-1, 2, 3) motion."""
    if frames.shape[0] != affines.shape[0] + 1:
        raise ValueError(f"{frames.shape[0]} frames need {frames.shape[0] - 1} affine maps, got {affines.shape[0]}")
    return warping_error(frames[:-1], frames[1:], affines, erode)


def clip_stability(model: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, affines: torch.Tensor,
                   batch: int = 4, erode: int = 1) -> dict[str, float]:
    """{"output": the stylized clip's warping error, "input": the input clip's (its floor)}. `model`
    maps (B, 3, h, w) in [0, 1] to the same shape; it sees the frames `batch` at a time, in order."""
    with torch.inference_mode():
        out = torch.cat([model(frames[i:i + batch]).float() for i in range(0, frames.shape[0], batch)])
    if out.shape != frames.shape:
        raise ValueError(f"the model returned {tuple(out.shape)} for frames {tuple(frames.shape)}")
    return {"output": clip_warping_error(out, affines, erode), "input": clip_warping_error(frames, affines, erode)}


# The clips `python -m pipeline evaluate --flicker N` makes from each of its first N photos: footage
# of a good camera, not a worst case. σ = 0.01 is ≈ 2.5 of 255 levels, the sensor noise left in a
# phone's or camcorder's video after its own denoising; JPEG quality 90 re-quantizes each frame about
# as much as a good H.264 encode (CRF ~18) does. Frames are 3/4 of the photo per side, so the camera
# has room to move at one photo pixel per frame pixel.
FLICKER_FRAMES = 8
FLICKER_NOISE_STD = 0.01
FLICKER_JPEG_QUALITY = 90
FLICKER_CROP = 0.75
FLICKER_MOTIONS: dict[str, dict] = {"pan": {"motion": "pan", "pan": (2.0, 1.0)},  # px per frame, right and down
                                    "zoom": {"motion": "zoom", "zoom": 1.02}}  # 2 % closer per frame


def flicker_settings() -> dict:
    """The clip parameters `photo_flicker` uses by default (recorded beside its numbers)."""
    return {"frames": FLICKER_FRAMES, "noise_std": FLICKER_NOISE_STD, "jpeg_quality": FLICKER_JPEG_QUALITY,
            "crop": FLICKER_CROP, "motions": {k: {n: list(v) if isinstance(v, tuple) else v for n, v in m.items()}
                                             for k, m in FLICKER_MOTIONS.items()}}


def photo_flicker(model: Callable[[torch.Tensor], torch.Tensor], photo: torch.Tensor, seed: int = 0,
                  n_frames: int = FLICKER_FRAMES, batch: int = 4) -> dict:
    """Flicker of `model` on clips made from one (3, H, W) photo in [0, 1], one per motion of
    FLICKER_MOTIONS (motion k's noise drawn with seed `seed + k`): per motion {"output", "input",
    "ratio" = output / input}, and over the motions "flicker_output" and "flicker_input" (their means)
    and "flicker_ratio" (the quotient of those). Outputs are clamped to [0, 1], as images are saved.
    A ratio of 1 is a model exactly as steady as its input; ∞ when the input clip has no error at all."""
    if photo.dim() != 3 or photo.shape[0] != 3:
        raise ValueError(f"photo must be (3, H, W), got {tuple(photo.shape)}")
    size = (max(2, round(photo.shape[1] * FLICKER_CROP)), max(2, round(photo.shape[2] * FLICKER_CROP)))
    per_motion = {}
    for k, (name, motion) in enumerate(FLICKER_MOTIONS.items()):
        frames, affines = synthetic_clip(photo, n_frames, size, noise_std=FLICKER_NOISE_STD,
                                         jpeg_quality=FLICKER_JPEG_QUALITY, seed=seed + k, **motion)
        s = clip_stability(lambda x: model(x).clamp(0, 1), frames, affines, batch)
        per_motion[name] = {**s, "ratio": _ratio(s["output"], s["input"])}
    output = float(np.mean([m["output"] for m in per_motion.values()]))
    floor = float(np.mean([m["input"] for m in per_motion.values()]))
    return {"flicker_output": output, "flicker_input": floor, "flicker_ratio": _ratio(output, floor),
            "flicker": per_motion}


def _ratio(output: float, floor: float) -> float:
    return output / floor if floor > 0 else (1.0 if output == 0 else math.inf)
