"""Side-by-side figures (content | stylized) for the README and reports.

`python -m pipeline figure --model runs/NAME/export/generator.pt2 --photo skimage:chelsea --out docs/images/x.jpg`
`--photo` takes a file path or `skimage:<name>` (a public-domain photo scikit-image ships).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from pipeline.serve.imaging import DecodedImage, limit_side, load_image, to_uint8
from pipeline.serve.model_io import load_model


def side_by_side(images: Sequence[torch.Tensor], gap: int = 4) -> Image.Image:
    """Concatenate (3, H, W) images of equal height left to right, white gaps between."""
    h = images[0].shape[1]
    white = torch.ones(3, h, gap)
    row = [images[0]]
    for im in images[1:]:
        row += [white, im]
    return Image.fromarray(to_uint8(torch.cat(row, dim=2)))


@torch.no_grad()
def content_stylized(model_path: str | Path, photo: str, height: int = 256) -> Image.Image:
    model, _ = load_model(model_path)
    x = load_image(photo)
    scale = height / x.shape[1]
    x = limit_side(DecodedImage(x, None), max(height, round(x.shape[2] * scale))).rgb
    return side_by_side([x, model(x[None])[0].clamp(0, 1)])


def command(*, model: Path, out: Path, photo: str = "skimage:chelsea", height: int = 256) -> int:
    """A content | stylized figure of one photo (for the README and reports).

    Args:
        model: .pt2, .pt or .ckpt.
        out: figure file (.jpg or .png).
        photo: a file or skimage:<name> (a public-domain photo scikit-image ships).
        height: figure height, px.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = content_stylized(model, photo, height)
    fig.save(out, quality=88) if out.suffix.lower() in (".jpg", ".jpeg") else fig.save(out)
    print(f"wrote {out} ({fig.width}×{fig.height})")
    return 0
