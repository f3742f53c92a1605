"""Quality measures behind `evaluate` and the ablation (pure tensor functions, no model).

- `psnr`: scikit-image's PSNR of two image tensors; contrast invariance (paper Fig. 2) is the PSNR
  between g(x) and g(a·x + b), the strength curve's distance to the photo another.
- `edge_energy_ratio` / `border_artifact_index`: border artifacts (paper Fig. 3): mean
  high-frequency energy (absolute Laplacian) in a `band`-px frame along the image edges,
  divided by the same in the centre. The index divides the stylized image's ratio by the
  content photo's, so 1.0 means "the edges are as busy as the photo makes them", and zero-padding
  artifacts (dark or bright seams along the frame) push it up.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two same-shape images in [0, peak] (scikit-image's
    `peak_signal_noise_ratio` on float64 copies); inf if equal."""
    from skimage.metrics import peak_signal_noise_ratio  # imported by the quality commands only

    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x, y = (t.detach().to("cpu", torch.float64).numpy() for t in (a, b))
    if np.array_equal(x, y):
        return math.inf  # scikit-image divides by a zero error there (and warns)
    return float(peak_signal_noise_ratio(x, y, data_range=peak))


def laplacian_energy(img: torch.Tensor) -> torch.Tensor:
    """|Laplacian| per pixel of a (3, H, W) or (1, 3, H, W) image, averaged over channels: (H-2, W-2)."""
    x = img if img.dim() == 4 else img[None]
    x = x.double().mean(dim=1, keepdim=True)  # luminance-ish: artifacts show in every channel
    return F.conv2d(x, _LAPLACE.double()[None, None]).abs()[0, 0]


def edge_energy_ratio(img: torch.Tensor, band: int = 16) -> float:
    """Mean |Laplacian| in the `band`-px frame along the edges / in the rest (the centre)."""
    e = laplacian_energy(img)
    h, w = e.shape
    if h <= 2 * band or w <= 2 * band:
        raise ValueError(f"image too small ({h + 2}×{w + 2}) for a {band}-px border band")
    mask = torch.ones_like(e, dtype=torch.bool)
    mask[band:h - band, band:w - band] = False
    border, centre = e[mask].mean().item(), e[~mask].mean().item()
    return border / max(centre, 1e-12)


def border_artifact_index(stylized: torch.Tensor, content: torch.Tensor, band: int = 16) -> float:
    """edge_energy_ratio(stylized) / edge_energy_ratio(content): 1.0 = no extra edge energy."""
    return edge_energy_ratio(stylized, band) / max(edge_energy_ratio(content, band), 1e-12)
