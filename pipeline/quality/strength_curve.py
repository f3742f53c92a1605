"""The strength curve of a model with the strength control: what a user sees along the slider.

For each strength in STRENGTHS, on the same photos: the output's RMSE to the photo (pixels in 0..1)
and its PSNR (`metrics.psnr`), each a mean over the photos, the style and content loss of the model's training loss, and the RMSE as a share of
full strength's (0 = the photo, 1 = the full style; an even slider has 0.5 near s = 0.5). One
comparison tells a trained path from a pixel cross-fade: the cross-fade (1 − s)·photo + s·g(x, 1)
at the same distance to the photo as the model's s = 0.5 output, with its style loss. A trained
path fades the strokes, not only the picture, and reaches a lower style loss there.

Used by `python -m pipeline evaluate` (metrics.json's `strength_curve`) and by the figures.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Callable

import torch

from pipeline.loss.losses import PerceptualLoss
from pipeline.quality.metrics import psnr

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
Stylize = Callable[[torch.Tensor, float], torch.Tensor]  # (photo (1, 3, H, W), strength) → output in [0, 1]


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean squared difference of two images in [0, 1]."""
    return float((a.float() - b.float()).pow(2).mean().sqrt())


@torch.inference_mode()
def strength_curve(stylize: Stylize, loss: PerceptualLoss, photos: list[torch.Tensor],
                   strengths: tuple[float, ...] = STRENGTHS) -> dict[str, Any]:
    """The curve over `photos` (each (1, 3, H, W) in [0, 1]): a row per strength (means over the photos)
    and the cross-fade comparison at the middle strength. `strengths` must include 0 and 1."""
    if 0.0 not in strengths or 1.0 not in strengths:
        raise ValueError(f"strengths {strengths} must include 0 and 1")
    per: dict[float, list[dict[str, float]]] = {s: [] for s in strengths}
    fades = []
    for x in photos:
        outputs = {s: stylize(x, s).clamp(0, 1) for s in strengths}
        for s, y in outputs.items():
            terms = loss(y, x)
            per[s].append({"rmse_to_photo": rmse(y, x), "psnr_to_photo_db": psnr(y, x), "style": float(terms["style"]),
                           "content": float(terms["content"])})
        fades.append(_cross_fade(loss, x, outputs, strengths))
    rows = [{"strength": s, **{k: statistics.fmean(r[k] for r in per[s]) for k in per[s][0]}} for s in strengths]
    full = rows[strengths.index(1.0)]["rmse_to_photo"]
    for row in rows:
        row["share_of_full"] = row["rmse_to_photo"] / full if full > 0 else math.nan
    middle = _middle(strengths)
    return {"photos": len(photos), "rows": rows,
            "cross_fade": {"strength": middle, **{k: statistics.fmean(f[k] for f in fades) for k in fades[0]}}}


def _middle(strengths: tuple[float, ...]) -> float:
    return min(strengths, key=lambda s: abs(s - 0.5))


def _cross_fade(loss: PerceptualLoss, x: torch.Tensor, outputs: dict[float, torch.Tensor],
                strengths: tuple[float, ...]) -> dict[str, float]:
    """The pixel cross-fade photo → full-strength output at the model's middle-strength distance to the
    photo, and the style loss of both (lower: more of the style for the same departure from the photo)."""
    middle, full = outputs[_middle(strengths)], outputs[1.0]
    target, span = rmse(middle, x), rmse(full, x)
    t = min(1.0, target / span) if span > 0 else 0.0  # the fade's RMSE to x is t·span, linear in t
    fade = (1 - t) * x + t * full
    return {"fade_t": t, "model_style": float(loss(middle, x)["style"]), "fade_style": float(loss(fade, x)["style"]),
            "model_rmse_to_fade": rmse(middle, fade)}


def curve_text(curve: dict[str, Any]) -> str:
    """The curve as a few lines for the console and the report."""
    lines = [f"strength curve ({curve['photos']} photos): s | RMSE to photo (share of s=1) | PSNR dB | style | content"]
    for r in curve["rows"]:
        lines.append(f"  {r['strength']:.2f} | {r['rmse_to_photo']:.4f} ({r['share_of_full']:.2f}) | "
                     f"{r['psnr_to_photo_db']:.1f} | {r['style']:.3f} | {r['content']:.3f}")
    f = curve["cross_fade"]
    lines.append(f"  at s={f['strength']}: style {f['model_style']:.3f} vs {f['fade_style']:.3f} for the pixel cross-fade "
                 f"at the same distance to the photo (RMSE model ↔ fade {f['model_rmse_to_fade']:.4f})")
    return "\n".join(lines)
