"""`python -m pipeline style-grid`: one photo through a multi-style model, a row per style. Columns:
photo | strengths 0 and 0.5 (models with the strength control) | the style (strength 1) | 50/50 mix
with the next style | colours preserved.

    python -m pipeline style-grid --model runs/trio/export/generator.pt2 --photo skimage:chelsea \\
        --out docs/images/strength_grid.jpg

Every cell is what the server returns for the matching request options (`X-Style`, `X-Strength`,
`X-Preserve-Color`): the same serving functions make it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from pipeline.quality.figures import grid
from pipeline.serve.color import preserve_color
from pipeline.serve.controls import Conditioning, call_model
from pipeline.common.image_codec import DecodedImage, limit_side, scaled_size
from pipeline.common.image_sources import load_image
from pipeline.serve.model_io import load_model

@torch.inference_mode()
def grid_rows(model: object, photo: torch.Tensor, strengths: tuple[float, ...] = (0.0, 0.5)) -> tuple[list[str], list[list[torch.Tensor]]]:
    """(column titles, one row of (3, H, W) images per style); `strengths` shown before full strength
    (models without the strength control: none)."""
    controls = model.instyle_controls  # type: ignore[attr-defined]
    n = len(controls.styles)
    strengths = tuple(strengths) if controls.strength else ()
    titles = ["photo", *(f"strength {s:g}" for s in strengths), "style (strength 1)" if strengths else "style",
              "50/50 mix with next", "colours preserved"]
    rows = []
    for k, name in enumerate(controls.styles):
        pure = tuple(1.0 if i == k else 0.0 for i in range(n))
        mix = tuple(0.5 if i in (k, (k + 1) % n) else 0.0 for i in range(n)) if n > 1 else pure
        conds = [Conditioning(pure, s) for s in strengths] + [Conditioning(pure), Conditioning(mix)]
        out = call_model(model, photo[None].expand(len(conds), -1, -1, -1).contiguous(), conds, controls).clamp(0, 1)
        full = out[len(strengths)]
        rows.append([photo, *out, preserve_color(full, photo)])
    return titles, rows


def command(*, model: Path, out: Path, photo: str = "skimage:chelsea", height: int = 192,
            strengths: list[float] = [0.0, 0.5]) -> int:
    """A grid of one photo × every style of a model × (lower strengths, the style, 50/50 mix, colours preserved).

    Args:
        model: a multi-style model (.pt2, .pt, .onnx or .ckpt).
        out: figure file (.jpg or .png).
        photo: a file or skimage:<name> (a public-domain photo scikit-image ships).
        height: height of each cell, px.
        strengths: the lower strengths shown before full strength (models with the strength control).
    """
    if any(not 0.0 <= s <= 1.0 for s in strengths):
        print(f"error: --strengths {strengths}: each must be in [0, 1]", file=sys.stderr)
        return 2
    try:
        net, _ = load_model(model)
        x = load_image(photo)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    h, w = scaled_size(x.shape[1], x.shape[2], height, "short" if x.shape[1] <= x.shape[2] else "long")
    x = limit_side(DecodedImage(x, None), max(h, w)).rgb  # cells `height` high (smaller photos: as they are)
    titles, rows = grid_rows(net, x, tuple(strengths))
    fig = grid(rows, titles=titles, names=net.instyle_controls.styles)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.save(out, quality=88) if out.suffix.lower() in (".jpg", ".jpeg") else fig.save(out)
    print(f"wrote {out} ({fig.width}×{fig.height})")
    return 0
