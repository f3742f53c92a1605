"""Colour preservation: the stylized image's luminance with the photo's colours.

Gatys et al.'s "luminance-only transfer" done after the fact: both images go to YCbCr (ITU-R
BT.601, full range, as JPEG uses), the output keeps the stylized Y and takes the photo's Cb and
Cr, and goes back to RGB (clamped to [0, 1], which is the only place the chroma can move). The
strokes and contrast of the style stay; the palette becomes the photo's.
"""
from __future__ import annotations

import torch

# RGB → YCbCr (BT.601 full range, offsets 0.5 for the chroma in [0, 1] units) and its inverse.
_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                         dtype=torch.float64)
_TO_RGB = torch.linalg.inv(_TO_YCBCR)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] → (3, H, W) Y, Cb, Cr in [0, 1] (chroma centred on 0.5)."""
    ycc = torch.einsum("ij,jhw->ihw", _TO_YCBCR.to(rgb.dtype), rgb)
    return ycc + torch.tensor([0.0, 0.5, 0.5], dtype=rgb.dtype).view(3, 1, 1)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_ycbcr` (not clamped)."""
    centred = ycc - torch.tensor([0.0, 0.5, 0.5], dtype=ycc.dtype).view(3, 1, 1)
    return torch.einsum("ij,jhw->ihw", _TO_RGB.to(ycc.dtype), centred)


def preserve_color(stylized: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """(3, H, W) stylized RGB with the chroma of `photo` (same shape), both in [0, 1]."""
    if stylized.shape != photo.shape:
        raise ValueError(f"shapes differ: stylized {tuple(stylized.shape)}, photo {tuple(photo.shape)}")
    # In the images' own float32: ample for 8-bit output, and a 4K image's temporaries stay ~100 MB each.
    y = rgb_to_ycbcr(stylized)[:1]
    chroma = rgb_to_ycbcr(photo.to(stylized.dtype))[1:]
    return ycbcr_to_rgb(torch.cat([y, chroma])).clamp_(0, 1)
