"""The ablation's evaluation and report: metrics table (markdown + JSON) and the paper-style
figures, from trained variant runs (see pipeline/quality/ablation.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipeline.quality.evaluate import evaluate
from pipeline.quality.figures import side_by_side
from pipeline.common.image_codec import resize, resize_short
from pipeline.common.image_sources import image_files, load_image, load_style, skimage_photo
from pipeline.loss.losses import build_loss
from pipeline.serve.model_io import load_model


FIGURE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # public-domain photos scikit-image ships


def train_seconds(run: Path) -> float | None:
    """Lightning's train/time at the last logged step (the training wall time), if logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 1}).Reload()
    return acc.Scalars("train/time")[-1].value if "train/time" in acc.Tags()["scalars"] else None


def skimage_folder(out: Path) -> Path:
    folder = out / "content-skimage"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FIGURE_PHOTOS:
        Image.fromarray(skimage_photo(name)).save(folder / f"{name}.png")
    return folder


@torch.inference_mode()
def stylize(model: Any, x: torch.Tensor) -> torch.Tensor:
    return model(x[None])[0].clamp(0, 1)


def figure(panels: list[torch.Tensor], path: Path) -> None:
    side_by_side(panels).save(path, quality=85)


def write_figures(models: dict[str, Any], out: Path) -> dict[str, str]:
    """Fig. 3 (padding), Fig. 5 (BN vs IN, both generators), Fig. 6 (512 vs 1080 px)."""
    figs = {}
    x = resize_short(load_image("skimage:coffee")[None], 256)[0]
    if {"res-in", "res-in-zero"} <= models.keys():
        figs["fig3_padding"] = "content | reflect padding | zero padding (residual, instance norm)"
        figure([x, stylize(models["res-in"], x), stylize(models["res-in-zero"], x)], out / "fig3_padding.jpg")
    order = [k for k in ("res-in", "res-bn", "ms-in", "ms-bn") if k in models]
    if order:
        y = resize_short(load_image("skimage:astronaut")[None], 224)[0]
        figs["fig5_norms"] = "content | " + " | ".join(order)
        figure([y] + [stylize(models[k], y) for k in order], out / "fig5_norms.jpg")
    if "res-in" in models:
        z = load_image("skimage:chelsea")[None]
        small, large = resize_short(z, 512), resize_short(z, 1080)
        out512 = stylize(models["res-in"], small[0])
        out1080 = resize(stylize(models["res-in"], large[0]), tuple(out512.shape[-2:]))  # shown at the same size
        figs["fig6_resolution"] = "content | stylized at 512 px | stylized at 1080 px (shown downscaled to 512)"
        figure([small[0], out512, out1080], out / "fig6_resolution.jpg")
    return figs


def markdown_table(rows: list[dict[str, Any]], gatys: list[dict[str, Any]], size: int, n_photos: int) -> str:
    lines = [f"Evaluated on {n_photos} validation photos, short side {size} px; losses are the training loss "
             "terms (weighted); contrast PSNR = PSNR(g(x), g(0.5x+0.25)); border index = edge/centre "
             "high-frequency energy of the output over that of the photo (1.0 = no extra edge energy).", "",
             "| variant | train steps | train time | style | content | total | ms / image | contrast PSNR (dB) | border index |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = f"{r['train_seconds'] / 60:.1f} min" if r.get("train_seconds") else "n/a"
        m = r["mean"]
        lines.append(f"| {r['label']} | {r['steps']} | {t} | {m['style']:.3f} | {m['content']:.3f} | {m['total']:.3f} | "
                     f"{m['seconds'] * 1000:.0f} | {m['contrast_psnr_db']:.1f} | {m['border_index']:.3f} |")
    if gatys:
        lines += ["", "Gatys et al. (L-BFGS from the content photo, same loss) vs the residual instance-norm model, "
                  "on the first photos:", "",
                  "| iterations | Gatys total | Gatys seconds | loss ratio model / Gatys | speed ratio Gatys / model |",
                  "|---|---|---|---|---|"]
        for g in gatys:
            lines.append(f"| {g['iters']} | {g['total']:.3f} | {g['seconds']:.1f} | "
                         f"{g['loss_ratio_model_over_gatys']:.2f} | {g['speed_ratio_gatys_over_model']:.0f}× |")
    return "\n".join(lines) + "\n"


def write_report(style: str | Path, variants: list[tuple[Any, Path]], out: Path, *, content: Path | None, limit: int,
                 gatys_iters: list[int], eval_size: int, preset: str, steps: int) -> dict[str, Any]:
    """Evaluate every (variant, run), write table.md, metrics.json and the figures into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    photos = image_files(content or skimage_folder(out))[:limit or None]
    iters = list(gatys_iters)
    rows, models, gatys = [], {}, []
    for v, run in variants:
        ckpt = run / "checkpoints" / "last.ckpt"
        model, meta = load_model(ckpt)
        models[v.key] = model
        hp = meta.get("hyper_parameters") or {}
        loss = build_loss(load_style(style, hp.get("style_size", 256)), hp)
        n_gatys = 2 if (v.key == "res-in" and iters) else 0
        result = evaluate(model, loss, photos, eval_size, out / v.key, n_gatys, iters, label=v.key)
        if n_gatys:
            gatys = result["gatys_mean"]
        rows.append({"key": v.key, "label": v.label, "run": str(run), "steps": meta.get("global_step"),
                     "train_seconds": train_seconds(run), "mean": result["mean"]})
    figs = write_figures(models, out)
    table = markdown_table(rows, gatys, eval_size, len(photos))
    (out / "table.md").write_text(table)
    report = {"style": str(style), "preset": preset, "steps": steps, "eval_size": eval_size,
              "photos": [p.name for p in photos], "variants": rows, "gatys": gatys, "figures": figs}
    (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table)
    return report
