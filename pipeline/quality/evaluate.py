"""`python -m pipeline evaluate`: measured quality of a model on a folder of photos.

For every photo (short side resized to `--size`): the style, content, TV and total loss of the
stylized output with the model's own training loss (same VGG layers, weights and flavour; the
weighted terms as training logs them), the model time per image, the contrast-invariance PSNR
between g(x) and g(0.5·x + 0.25) (paper Fig. 2) and the border-artifact index (paper Fig. 3,
see pipeline/quality/metrics.py). The first `--flicker N` photos (default 2) also get the flicker
metric (pipeline/quality/stability.py: the warping error of the stylized frames of a synthetic pan
and zoom over the photo, the input clip's own error, their ratio). With `--gatys N` the first N photos
also get the Gatys baseline at `--gatys_iters`, and loss / speed ratios. A model with the strength
control also gets its strength curve on the first `--curve N` photos (default 4; the distance to the
photo and the losses at strengths 0, 0.25, 0.5, 0.75, 1: pipeline/quality/strength_curve.py). Writes
`<out>/metrics.json` (per image and mean) and `<out>/report.html` (the image grid).

    python -m pipeline evaluate --model runs/NAME/export/generator.pt2 --style style.jpg --content photos/ --out reports/NAME
"""
from __future__ import annotations

import html
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline.quality.gatys import GATYS_ITERS, optimize
from pipeline.common.image_codec import encode, resize_short
from pipeline.common.image_sources import image_exists, image_files, load_image_file, load_style, style_name
from pipeline.loss.losses import PerceptualLoss, build_loss
from pipeline.quality.metrics import border_artifact_index, psnr
from pipeline.quality.stability import flicker_settings, photo_flicker
from pipeline.quality.strength_curve import curve_text, strength_curve
from pipeline.serve.controls import call_model, conditioning
from pipeline.train.styles import style_specs

CONTRAST = (0.5, 0.25)  # g(x) vs g(a·x + b): a low-contrast version of the same photo


@torch.inference_mode()
def timed(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    y = model(x)
    return y.clamp(0, 1), time.perf_counter() - start


def evaluate_image(model: Callable, loss: PerceptualLoss, x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics of one (1, 3, H, W) photo; returns (metrics, stylized image)."""
    y, seconds = timed(model, x)
    a, b = CONTRAST
    y_low, _ = timed(model, a * x + b)
    with torch.no_grad():
        terms = {k: float(v) for k, v in loss(y, x).items()}
    return {**terms, "seconds": round(seconds, 4), "contrast_psnr_db": round(psnr(y, y_low), 2),
            "border_index": round(border_artifact_index(y[0], x[0]), 4)}, y


def mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each numeric metric's mean over the rows that have it (flicker: only the first few photos)."""
    keys = dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    return {k: statistics.fmean(r[k] for r in rows if k in r) for k in keys}


def evaluate(model: Callable, loss: PerceptualLoss, photos: list[Path], size: int, out: Path,
             gatys: int = 0, gatys_iters: list[int] | None = None, label: str = "model",
             flicker: int = 0) -> dict[str, Any]:
    """Evaluate on `photos`, save images under out/images, return the metrics dict (also written).
    The first `flicker` photos also get `photo_flicker` (seeded by the photo's index)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    with torch.inference_mode():  # warm-up so the first photo's time is not the allocator's
        model(torch.rand(1, 3, 64, 64))
    for i, path in enumerate(photos):
        x = resize_short(load_image_file(path)[None], size)
        metrics, y = evaluate_image(model, loss, x)
        row: dict[str, Any] = {"image": path.name, "height": x.shape[2], "width": x.shape[3], **metrics}
        save(out / "images" / f"{path.stem}-content.jpg", x)
        save(out / "images" / f"{path.stem}-{label}.jpg", y)
        if i < flicker:
            row.update(photo_flicker(model, x[0], seed=i))
        if i < gatys:
            row["gatys"] = []
            for rec in optimize(loss, x, gatys_iters or list(GATYS_ITERS)):
                save(out / "images" / f"{path.stem}-gatys{rec['iters']}.jpg", rec.pop("image"))
                rec["loss_ratio_model_over_gatys"] = round(row["total"] / rec["total"], 4)
                rec["speed_ratio_gatys_over_model"] = round(rec["seconds"] / max(row["seconds"], 1e-9), 1)
                row["gatys"].append(rec)
        rows.append(row)
        print(f"[evaluate] {path.name}: total {row['total']:.3f} style {row['style']:.3f} content "
              f"{row['content']:.3f} {row['seconds'] * 1000:.0f} ms, contrast PSNR {row['contrast_psnr_db']} dB, "
              f"border index {row['border_index']}{flicker_text(row)}", flush=True)
    result = {"label": label, "size": size, "contrast": {"a": CONTRAST[0], "b": CONTRAST[1]}, "images": rows,
              "mean": mean_metrics(rows), "gatys_mean": gatys_means(rows),
              "flicker": {"photos": min(flicker, len(rows)), **flicker_settings()} if flicker else None}
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.html").write_text(report_html(result))
    return result


def gatys_means(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per Gatys iteration count, the mean over the photos that have it."""
    by_iter: dict[int, list[dict]] = {}
    for row in rows:
        for rec in row.get("gatys", []):
            by_iter.setdefault(rec["iters"], []).append(rec)
    return [{"iters": it, **{k: statistics.fmean(r[k] for r in recs) for k in recs[0] if k != "iters"}}
            for it, recs in sorted(by_iter.items())]


def flicker_text(row: dict[str, Any]) -> str:
    """', flicker 0.0312 (floor 0.0150, 2.08×)' for a row with the flicker metric, else ''."""
    if "flicker_output" not in row:
        return ""
    return (f", flicker {row['flicker_output']:.4f} (floor {row['flicker_input']:.4f}, "
            f"{row['flicker_ratio']:.2f}×)")


def save(path: Path, img: torch.Tensor) -> None:
    path.write_bytes(encode(img[0] if img.dim() == 4 else img, None, "jpeg", 88)[0])


def report_html(result: dict[str, Any]) -> str:
    """A self-contained page: the mean metrics and, per photo, content | stylized (| Gatys)."""
    label, esc = result["label"], html.escape
    head = "".join(f"<th>{esc(k)}</th>" for k in result["mean"])
    mean = "".join(f"<td>{v:.4g}</td>" for v in result["mean"].values())
    rows = []
    for r in result["images"]:
        stem = Path(r["image"]).stem
        cells = [f'<img src="images/{esc(stem)}-content.jpg" height="200">',
                 f'<img src="images/{esc(stem)}-{esc(label)}.jpg" height="200">']
        cells += [f'<img src="images/{esc(stem)}-gatys{g["iters"]}.jpg" height="200" title="Gatys {g["iters"]} it">'
                  for g in r.get("gatys", [])]
        text = (f"{esc(r['image'])}: total {r['total']:.3f}, style {r['style']:.3f}, content {r['content']:.3f}, "
                f"{r['seconds'] * 1000:.0f} ms, contrast PSNR {r['contrast_psnr_db']} dB, border index {r['border_index']}"
                f"{esc(flicker_text(r))}")
        rows.append(f"<p>{text}</p><p>{' '.join(cells)}</p>")
    return (f"<!doctype html><meta charset='utf-8'><title>{esc(label)}</title><h1>{esc(label)}</h1>"
            f"<p>resolution: short side {result['size']} px; contrast pair: g(x) vs g({result['contrast']['a']}·x + "
            f"{result['contrast']['b']})</p>{flicker_caption(result['flicker'])}"
            f"<table border=1><tr>{head}</tr><tr>{mean}</tr></table>{curve_html(result.get('strength_curve'))}"
            f"<p>content | stylized{gatys_caption(result['gatys_mean'])}</p>" + "".join(rows))


def curve_html(curve: dict[str, Any] | None) -> str:
    """The strength curve as a preformatted block for the report page ('' when not measured)."""
    return f"<pre>{html.escape(curve_text(curve))}</pre>" if curve else ""


def flicker_caption(settings: dict[str, Any] | None) -> str:
    """What the flicker numbers are, for the report page ('' when not measured)."""
    if not settings:
        return ""
    return (f"<p>flicker (first {settings['photos']} photos): warping error (RMSE, known motion) of the stylized "
            f"frames of synthetic {' and '.join(settings['motions'])} clips of {settings['frames']} frames (noise σ "
            f"{settings['noise_std']}, JPEG q{settings['jpeg_quality']}); floor: the input clip's own error; ratio: "
            f"output / floor (1 = as steady as the input)</p>")


def gatys_caption(gatys_mean: list[dict[str, Any]]) -> str:
    """' | Gatys (50, 100, 300 it)' with the iteration counts this report actually ran, or ''."""
    return f" | Gatys ({', '.join(str(g['iters']) for g in gatys_mean)} it)" if gatys_mean else ""


def curve_of(net: Any, style_name: str | None, loss: PerceptualLoss, photos: list[Path], size: int) -> dict[str, Any]:
    """The strength curve of one style of `net` (a model with the strength control) on `photos`."""
    images = [resize_short(load_image_file(p)[None], size) for p in photos]
    return strength_curve(lambda x, s: conditioned_model(net, style_name, s)[0](x), loss, images)


def conditioned_model(net: Any, style_name: str | None, strength: float | None) -> tuple[Callable, int]:
    """`net` as a one-argument callable for one style (by name; default the first) and strength, and
    that style's index (a clear ValueError for a style or strength the model does not have)."""
    controls = net.instyle_controls
    cond = conditioning({"style": style_name, "strength": None if strength is None else repr(float(strength))}, controls)
    return (lambda x: call_model(net, x, [cond] * x.shape[0], controls)), cond.weights.index(max(cond.weights))


def training_style(hp: dict[str, Any], name: str) -> str | None:
    """The style image (file or skimage:<name>) a run trained style `name` on, from its hyper-parameters
    (by name: a model made FROM another lists only its new styles' images)."""
    spec = hp.get("style_image")
    if not spec:
        return None
    try:
        specs = style_specs(spec)
    except (ValueError, FileNotFoundError):
        return None
    # a model made FROM another lists only its new paintings: a name not among them has no image here
    only = specs[0] if len(specs) == 1 and not hp.get("init_from") else None
    return next((s for s in specs if style_name(s) == name), only)


def command(*, model: Path, content: Path, out: Path, style: str | None = None, size: int = 256,
            limit: int | None = None, gatys: int = 0, gatys_iters: list[int] = list(GATYS_ITERS),
            style_name: str | None = None, strength: float | None = None, flicker: int = 2, curve: int = 4) -> int:
    """Measure a model on a folder of photos: losses, time, contrast PSNR, border index, flicker (+ Gatys).

    Writes OUT/metrics.json and OUT/report.html.

    Args:
        model: .pt2, .pt, .ckpt, .safetensors, or a packaged model's name (`starter`).
        content: folder of photos.
        out: report folder.
        style: style image, a file or skimage:<name> (default: the model's training style, from its metadata).
        style_name: a multi-style model's style to evaluate (default: its first).
        strength: the strength to evaluate a model with the strength control at (default 1).
        size: short side the photos are resized to, px.
        limit: evaluate the first N photos only.
        flicker: measure flicker (synthetic pan and zoom clips) on the first N photos; 0: off.
        curve: models with the strength control: the strength curve on the first N photos; 0: off.
        gatys: run the Gatys baseline on the first N photos.
        gatys_iters: Gatys iteration counts to record.
    """
    from pipeline.common.memory import reuse_freed_memory
    from pipeline.serve.model_io import load_model

    reuse_freed_memory()  # this command's process: allocator tuning (pipeline.common.memory)
    if flicker < 0 or curve < 0:
        print(f"error: --flicker {flicker} --curve {curve}: give numbers of photos ≥ 0", file=sys.stderr)
        return 2
    try:
        net, meta = load_model(model)  # a file, or a packaged model's name (`starter`)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: cannot load model: {e}", file=sys.stderr)
        return 2
    hp = meta.get("hyper_parameters") or {}
    try:
        run_model, index = conditioned_model(net, style_name, strength)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    style = style or training_style(hp, net.instyle_controls.styles[index])  # a file or skimage:<name>
    if style is None or not image_exists(style):
        print(f"error: style image {style} not found: pass --style", file=sys.stderr)
        return 2
    try:
        photos = image_files(content)[:limit or None]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loss = build_loss(load_style(style, hp.get("style_size", 256)), hp)
    result = evaluate(run_model, loss, photos, size, out, gatys, gatys_iters, flicker=flicker)
    if curve and net.instyle_controls.strength:
        result["strength_curve"] = curve_of(net, style_name, loss, photos[:curve], size)
        (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "report.html").write_text(report_html(result))
        print(curve_text(result["strength_curve"]))
    print(json.dumps(result["mean"], indent=1))
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0
