"""The slow baseline: Gatys et al. optimization of the pixels with the same VGG and loss.

Starts from the content photo and minimizes the same style + content + TV loss the
feed-forward models are trained with (same layers, weights and VGG flavour), with L-BFGS (as
Gatys et al.) or Adam, recording the loss terms and the elapsed time at chosen iterations.

    python -m pipeline gatys --style starry_night.jpg --content photo.jpg --iters '[50,100,300]' --out gatys.png
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch

from pipeline.loss.losses import PerceptualLoss, build_loss
from pipeline.common.image_codec import encode, resize_short
from pipeline.common.image_sources import image_exists, load_image, load_style

GATYS_ITERS = (50, 100, 300)  # iteration counts recorded by default (here, in `evaluate` and the ablation)


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
    x = content.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)  # LBFGS flattens its grad
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


def command(*, style: str, content: str, iters: list[int] = list(GATYS_ITERS), size: int = 256,
            style_size: int = 256, optimizer: Literal["lbfgs", "adam"] = "lbfgs", out: Path | None = None) -> int:
    """The slow baseline: optimize the pixels of one photo with the training loss (Gatys et al.).

    Prints the loss terms and elapsed time at each iteration count as JSON lines.

    Args:
        style: style image: a file or skimage:<name>.
        content: content photo: a file or skimage:<name>.
        iters: iteration counts to record.
        size: short side the content is resized to, px.
        style_size: long side of the style image (as the cpu preset).
        optimizer: lbfgs (as Gatys et al.) or adam.
        out: write the final image here (PNG).
    """
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()  # this command's process: allocator tuning (pipeline.common.memory)
    for path in (style, content):
        if not image_exists(path):
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    try:
        records = optimize(build_loss(load_style(style, style_size)), resize_short(load_image(content)[None], size),
                           iters, optimizer)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in records:
        print(json.dumps({k: v for k, v in r.items() if k != "image"}))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode(records[-1]["image"][0], None, "png")[0])
    return 0
