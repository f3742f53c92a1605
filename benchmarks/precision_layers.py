"""Which convolutions' bf16 rounding moves the pixels: each convolution alone in bf16, and the served rule
with each one further convolution in fp32, against fp32 on photos.

    python -m benchmarks.precision_layers --model runs/NAME/export/generator.pt2 [--limit 20]

Convolutions are numbered in call order (for the residual generator: 0 the 9×9 on the photo, 1–2 the
stride-2 ones, 3–12 the residual blocks, 13–14 the decoder, 15 the output). Prints, per convolution, the max
difference in 8-bit levels, the mean and the number of pixels more than 2 levels off over all photos. The
figures of docs/serving.md (Precision: why the first convolutions stay fp32) come from this command.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from pipeline.common.image_codec import IMAGE_SUFFIXES
from pipeline.serve import precision as P
from pipeline.serve.controls import call_model
from pipeline.serve.model_io import load_model


class Numbered(P.LowPrecisionConvolutions):
    """bf16 convolutions as served, except those `fp32(i)` picks (i: the convolution's call index)."""

    def __init__(self, fp32: Callable[[int], bool]):
        super().__init__(torch.bfloat16)
        self.fp32, self.calls = fp32, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in P._CONVOLUTIONS:
            self.calls += 1
            if self.fp32(self.calls - 1):
                return func(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


def levels(model: Any, x: torch.Tensor, mode: Any = None) -> torch.Tensor:
    with torch.inference_mode():
        if mode is None:
            y = call_model(model, x, None, model.instyle_controls)
        else:
            with mode:
                y = call_model(model, x, None, model.instyle_controls)
    return (y.clamp(0, 1) * 255).round()


def score(model: Any, xs: list[torch.Tensor], refs: list[torch.Tensor], fp32: Callable[[int], bool],
          every: bool) -> tuple[float, float, int]:
    """(max, mean, pixels > 2) levels off fp32 over the photos; `every`: the rule for every convolution."""
    rule = P.LOW_PRECISION_MIN_CHANNELS
    P.LOW_PRECISION_MIN_CHANNELS = 0 if every else rule
    try:
        diffs = [(levels(model, x, Numbered(fp32)) - ref).abs() for x, ref in zip(xs, refs)]
    finally:
        P.LOW_PRECISION_MIN_CHANNELS = rule
    return (max(float(d.max()) for d in diffs), float(np.mean([float(d.mean()) for d in diffs])),
            sum(int((d > 2).sum()) for d in diffs))


def fmt(figures: tuple[float, float, int]) -> str:
    return f"{figures[0]:.0f}, {figures[1]:.3f}, {figures[2]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision_layers", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="generator.pt2 or a .ckpt (a model without options)")
    p.add_argument("--photos", type=Path, default=Path("../shared/assets/content/val"))
    p.add_argument("--limit", type=int, default=20)
    args = p.parse_args(argv)
    photos = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:args.limit]
    if not photos:
        p.error(f"--photos {args.photos}: no images")
    model, _ = load_model(args.model)
    xs = [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)[None].float() / 255 for f in photos]
    refs = [levels(model, x) for x in xs]
    counter = Numbered(lambda i: True)
    with torch.inference_mode(), counter:
        call_model(model, xs[0], None, model.instyle_controls)
    print(f"{args.model}: {len(photos)} photos, {counter.calls} convolutions; levels off fp32 (max, mean, pixels > 2)")
    print(f"every convolution in bf16: {fmt(score(model, xs, refs, lambda i: False, every=True))}")
    print(f"served rule (< {P.LOW_PRECISION_MIN_CHANNELS} input channels in fp32): "
          f"{fmt(score(model, xs, refs, lambda i: False, every=False))}")
    print("| convolution | alone in bf16 | served rule + this one in fp32 |\n|---|---|---|")
    for k in range(counter.calls):
        alone = score(model, xs, refs, lambda i, k=k: i != k, every=True)
        plus = score(model, xs, refs, lambda i, k=k: i == k, every=False)
        print(f"| {k} | {fmt(alone)} | {fmt(plus)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
