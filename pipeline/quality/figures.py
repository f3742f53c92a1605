"""Side-by-side figures (content | stylized) for the README and reports.

`python -m pipeline figure --model runs/NAME/export/generator.pt2 --photo skimage:chelsea --out docs/images/x.jpg`
`--photo` takes a file path or `skimage:<name>` (a public-domain photo scikit-image ships).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from pipeline.common.image_codec import DecodedImage, limit_side, to_uint8
from pipeline.common.image_sources import load_image
from pipeline.serve.model_io import load_model


LABEL_HEIGHT = 18  # px of the title band above the columns


def grid(rows: Sequence[Sequence[torch.Tensor]], gap: int = 4, titles: Sequence[str] = (),
         names: Sequence[str] = ()) -> Image.Image:
    """Rows of (3, H, W) images in [0, 1], all of one size, as one picture with white gaps between
    (torchvision's `make_grid`); `titles` go in a band above the columns, `names` on each row's first image."""
    if len({im.shape for row in rows for im in row}) != 1 or len({len(row) for row in rows}) != 1:
        raise ValueError("a grid needs rows of equally many images, all of one size")
    cells = [im.detach().float().cpu() for row in rows for im in row]
    sheet = make_grid(cells, nrow=len(rows[0]), padding=gap, pad_value=1.0)[:, gap:-gap, gap:-gap]  # no outer border
    picture = Image.fromarray(to_uint8(sheet))
    if titles:
        banded = Image.new("RGB", (picture.width, picture.height + LABEL_HEIGHT), "white")
        banded.paste(picture, (0, LABEL_HEIGHT))
        picture = banded
    draw, (h, w) = ImageDraw.Draw(picture), rows[0][0].shape[1:]
    for i, title in enumerate(titles):
        draw.text((i * (w + gap) + 4, 3), title, fill="black")
    top = LABEL_HEIGHT if titles else 0
    for i, name in enumerate(names):
        draw.text((4, top + i * (h + gap) + 4), name, fill="white", stroke_width=2, stroke_fill="black")
    return picture


def side_by_side(images: Sequence[torch.Tensor], gap: int = 4) -> Image.Image:
    """(3, H, W) images of one size left to right, white gaps between."""
    return grid([images], gap)


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
