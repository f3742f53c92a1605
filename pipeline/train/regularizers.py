"""Temporal-stability regularization for video (off by default: `--model.stability_weight`).

A per-frame network flickers when tiny input changes (sensor noise, compression, a small camera
move) change its strokes. Following Gupta et al. (ICCV 2017) and the compound regularization of
Wang et al. (AAAI 2020), training penalizes, on still photos, how much the output changes

- under input noise:  ‖g(x + n) − g(x)‖², n Gaussian with σ = NOISE_STD;
- under a small warp: ‖g(W x) − W g(x)‖² on the pixels W keeps in view, W a random affine map
  (shift ≤ MAX_SHIFT px, zoom ≤ MAX_ZOOM, rotation ≤ MAX_ROTATION degrees),

so still-image shards are enough to train a steadier video model.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

NOISE_STD = 0.02  # ≈ 5/255: sensor noise and compression between consecutive frames
MAX_SHIFT = 2.0  # px
MAX_ZOOM = 0.02
MAX_ROTATION = 1.0  # degrees


def random_affine(batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(B, 2, 3) affine_grid matrices (normalized coordinates) of small random camera moves."""
    angle = (torch.rand(batch, device=device) * 2 - 1) * math.radians(MAX_ROTATION)
    zoom = 1 + (torch.rand(batch, device=device) * 2 - 1) * MAX_ZOOM
    shift = (torch.rand(batch, 2, device=device) * 2 - 1) * MAX_SHIFT
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # rotation/zoom in pixel units, expressed in affine_grid's [-1, 1] coordinates (aspect-corrected)
    theta = torch.stack([torch.stack([cos, -sin * h / w, shift[:, 0] * 2 / w], 1),
                         torch.stack([sin * w / h, cos, shift[:, 1] * 2 / h], 1)], 1)
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x warped by theta (bilinear) and the mask of output pixels that came from inside x, in fp32
    with autocast off whatever x's dtype: a bf16 sampling grid is up to ~0.5 px off at 256 px."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        ones = torch.ones_like(x[:, :1])
        inside = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.999
    return warped, inside.float()


def stability_loss(generate: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared output change under noise plus under a small warp; `y` = generate(x). The noise,
    the warps and the differences are fp32 (only `generate` runs under autocast)."""
    noisy = (x.float() + NOISE_STD * torch.randn_like(x, dtype=torch.float32)).clamp(0, 1)
    noise_term = (generate(noisy).float() - y.float()).pow(2).mean()
    theta = random_affine(x.shape[0], x.shape[2], x.shape[3], x.device)
    x_w, mask = warp(x, theta)
    y_w, _ = warp(y, theta)
    diff = (generate(x_w).float() - y_w).pow(2) * mask
    warp_term = diff.sum() / (mask.sum() * y.shape[1]).clamp_min(1)
    return noise_term + warp_term
