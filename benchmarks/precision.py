"""How far the low inference precisions are from fp32, on photos, through the serving path.

    python -m benchmarks.precision --model runs/NAME/export/generator.pt2 [--photos DIR] [--limit 20]
        [--style 'a:0.5,b:0.5'] [--strength 0.3] [--precisions bf16,fp16] [--out FILE]

Each photo goes through what the server does (`prepare`: decode, EXIF, the size cap; `run_batch` at
the precision; 8-bit output as the PNG holds it), once in fp32 and once per precision. Prints per
precision the max and mean difference in 8-bit levels (worst photo and over all), the share of pixels
more than 2 levels off and the PSNR to fp32 (worst photo), plus the time of one call at each
precision (the first photo, best of 3); with --out also writes them as JSON. The figures of
docs/serving.md (Precision) come from this command.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.common.image_codec import IMAGE_SUFFIXES
from pipeline.serve.controls import conditioning
from pipeline.serve.inference import prepare, run_batch
from pipeline.serve.precision import CHOICES, resolve_precision
from pipeline.serve.model_io import load_model


def levels(model: Any, image: Any, condition: Any, precision: str) -> torch.Tensor:
    """The 8-bit output (3, H, W) as float levels 0..255."""
    (y,) = run_batch(model, [image], "cpu", None, [condition], precision)
    return (y.clamp(0, 1) * 255).round()


def best_time(model: Any, image: Any, condition: Any, precision: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_batch(model, [image], "cpu", None, [condition], precision)
        times.append(time.perf_counter() - start)
    return min(times)


def compare(model_path: Path, photos: list[Path], params: dict[str, str], precisions: list[str]) -> dict[str, Any]:
    """Per precision: the difference figures to fp32 over `photos` and the call time on the first one."""
    model, _ = load_model(model_path)
    condition = conditioning(params, model.instyle_controls)
    images = [prepare(p.read_bytes(), params, controls=model.instyle_controls)[0] for p in photos]
    fp32 = [levels(model, im, condition, "fp32") for im in images]
    out: dict[str, Any] = {"model": str(model_path), "photos": len(photos), "params": params,
                           "size": list(images[0].size), "fp32_s": best_time(model, images[0], condition, "fp32"),
                           "precisions": {}}
    for precision in precisions:
        per_photo = []
        for image, ref in zip(images, fp32):
            diff = (levels(model, image, condition, precision) - ref).abs()
            mse = float((diff ** 2).mean())
            per_photo.append({"max": float(diff.max()), "mean": float(diff.mean()),
                              "over_2": float((diff > 2).float().mean()),
                              "psnr_db": math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)})
        out["precisions"][precision] = {
            "max_levels": max(p["max"] for p in per_photo), "mean_levels": sum(p["mean"] for p in per_photo) / len(per_photo),
            "worst_photo_mean_levels": max(p["mean"] for p in per_photo),
            "share_over_2_levels": max(p["over_2"] for p in per_photo),
            "min_psnr_db": min(p["psnr_db"] for p in per_photo),
            "seconds": best_time(model, images[0], condition, precision)}
    return out


def main(argv: list[str] | None = None) -> int:
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()  # as the server and `stylize` run (pipeline.common.memory): times comparable to theirs
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="generator.pt2 or a .ckpt")
    p.add_argument("--photos", type=Path, default=Path("../shared/assets/content/val"))
    p.add_argument("--limit", type=int, default=20, help="the first N photos (sorted by name)")
    p.add_argument("--style", default=None, help="a multi-style model's style or mix, as a request gives it")
    p.add_argument("--strength", default=None, help="0..1, for a model with the strength control")
    p.add_argument("--precisions", default="bf16", help=f"comma-separated, of {', '.join(CHOICES[2:])}")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    precisions = [x for x in args.precisions.split(",") if x]
    for precision in precisions:
        if precision not in CHOICES[2:]:
            p.error(f"--precisions: {precision!r} is not one of {', '.join(CHOICES[2:])}")
    if not args.photos.is_dir():
        p.error(f"--photos {args.photos}: not a folder")
    photos = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:args.limit]
    if not photos:
        p.error(f"--photos {args.photos}: no images")
    params = {k: v for k, v in (("style", args.style), ("strength", args.strength)) if v is not None}
    result = compare(args.model, photos, params, precisions)
    result["auto_here"] = resolve_precision("auto", "cpu")
    h, w = result["size"]
    print(f"{result['model']}: {result['photos']} photos ({w}×{h} the first), {params or 'default options'}; "
          f"fp32 {result['fp32_s'] * 1000:.0f} ms; auto here = {result['auto_here']}")
    print("| precision | max diff (levels) | mean diff (levels) | worst photo mean | pixels > 2 levels (worst photo) "
          "| PSNR vs fp32 (worst photo) | time × fp32 |")
    print("|---|---|---|---|---|---|---|")
    for precision, r in result["precisions"].items():
        print(f"| {precision} | {r['max_levels']:.0f} | {r['mean_levels']:.3f} | {r['worst_photo_mean_levels']:.3f} | "
              f"{100 * r['share_over_2_levels']:.4f} % | {r['min_psnr_db']:.1f} dB | {r['seconds'] / result['fp32_s']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
