"""The slow baseline: Gatys et al. optimization of the pixels with the same VGG and loss.

Starts from the content photo and minimizes the same style + content + TV loss the
feed-forward models are trained with (same layers, weights and VGG flavour), with L-BFGS (as
Gatys et al.) or Adam, recording the loss terms and the elapsed time at chosen iterations.

    python -m pipeline gatys --style starry_night.jpg --content photo.jpg --iters 50,100,300 --out gatys.png
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.loss.losses import STYLE_LAYERS, PerceptualLoss
from pipeline.serve.imaging import encode, load_image_file, load_style, resize_short

# The training defaults (pipeline/train/module.py): the baseline optimizes exactly what the models learn.
DEFAULT_LOSS = dict(content_layer="relu2_2", style_weight=2e-5, content_weight=1e-5, tv_weight=1.0, vgg_flavour="caffe")


def build_loss(style: torch.Tensor, hparams: dict[str, Any] | None = None) -> PerceptualLoss:
    """PerceptualLoss with a model's loss hyper-parameters (or the training defaults)."""
    hp = {**DEFAULT_LOSS, **{k: v for k, v in (hparams or {}).items() if k in DEFAULT_LOSS}}
    return PerceptualLoss(style, content_layer=hp["content_layer"], style_layers=STYLE_LAYERS,
                          style_weight=hp["style_weight"], content_weight=hp["content_weight"],
                          tv_weight=hp["tv_weight"], vgg_flavour=hp["vgg_flavour"],
                          vgg_weights=(hparams or {}).get("vgg_weights")).eval()


def optimize(loss: PerceptualLoss, content: torch.Tensor, checkpoints: list[int], optimizer: str = "lbfgs",
             lr: float | None = None) -> list[dict[str, Any]]:
    """Optimize the image from `content` (1, 3, H, W); at each iteration count in `checkpoints`
    record {'iters', 'seconds', 'style', 'content', 'tv', 'total', 'image'} (image clamped to [0, 1])."""
    if not checkpoints or min(checkpoints) < 1:
        raise ValueError("checkpoints must be positive iteration counts")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer={optimizer!r}: choose lbfgs or adam")
    for p in loss.parameters():
        p.requires_grad_(False)
    x = content.detach().clone().requires_grad_(True)
    if optimizer == "lbfgs":
        # step() runs up to max_iter iterations; it is called once per checkpoint interval with
        # the remaining count (the L-BFGS history carries over between calls).
        opt = torch.optim.LBFGS([x], lr=lr or 1.0, max_iter=1, history_size=50, line_search_fn="strong_wolfe")
    else:
        opt = torch.optim.Adam([x], lr=lr or 0.02)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        total = loss(x, content)["total"]
        total.backward()
        return total

    records, start, done = [], time.perf_counter(), 0
    for target in sorted(set(checkpoints)):
        if optimizer == "lbfgs":
            opt.param_groups[0]["max_iter"] = target - done
            opt.param_groups[0]["max_eval"] = max((target - done) * 5 // 4, target - done + 1)  # torch default ratio
            opt.step(closure)
        else:
            for _ in range(target - done):
                opt.step(closure)
        done = target
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            image = x.detach().clamp(0, 1)
            terms = {k: float(v) for k, v in loss(image, content).items()}
        records.append({"iters": target, "seconds": round(elapsed, 3), **terms, "image": image})
    return records


def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(prog="python -m pipeline gatys", description=__doc__.split("\n\n")[0])
    p.add_argument("--style", type=Path, required=True)
    p.add_argument("--content", type=Path, required=True)
    p.add_argument("--iters", default="50,100,300", help="iteration counts to record (comma-separated)")
    p.add_argument("--size", type=int, default=256, help="content resized so its short side is this (px)")
    p.add_argument("--style-size", type=int, default=256, help="long side of the style image (as the cpu preset)")
    p.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adam"))
    p.add_argument("--out", type=Path, default=None, help="write the final image here (PNG)")
    args = p.parse_args(argv)
    try:
        iters = [int(i) for i in args.iters.split(",")]
    except ValueError:
        p.error(f"--iters {args.iters!r}: give comma-separated integers")
    for path in (args.style, args.content):
        if not path.is_file():
            p.error(f"{path} does not exist")
    content = resize_short(load_image_file(args.content)[None], args.size)
    loss = build_loss(load_style(args.style, args.style_size))
    records = optimize(loss, content, iters, args.optimizer)
    for r in records:
        print(json.dumps({k: v for k, v in r.items() if k != "image"}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(encode(records[-1]["image"][0], None, "png")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
