"""Training worker: optimizer steps of the reference or of the project's training step, own process.

    python -m benchmarks.train_step --variant ours --size 256 --run RUN --style STYLE.jpg [--steps 3] [--precision bf16-mixed]

`adapt-new_styles` / `adapt-all` is the step of `make train STYLE=… FROM=<run>`: a style added to the
run's model, learning only its rows (no weight gradients for the convolutions) or every weight with
the run's own style replayed.
`ours` is exactly what `StyleTransferModule.training_step` computes (generator → PerceptualLoss
with the project's VGGFeatures → backward → Adam), without the Lightning loop around it (logging
and the progress bar cost milliseconds against seconds per step). `reference` is
`benchmarks.reference.ReferenceTrainer`. Both start from the run's generator weights, see the
same batches and use the cpu preset's loss weights, so their loss values can be compared. On a run
of the presets' generator (strength control) `ours` adds the strength samples as training does
(`StyleTransferModule.with_strength_samples`): its losses then differ from the plain reference's by
design, and images/s counts the batch's photos.
`--precision bf16-mixed` runs the step as Lightning's `bf16-mixed` does on the CPU: the forward pass and
the loss under `torch.autocast("cpu", torch.bfloat16)` (Gram matrices stay fp32), backward and Adam on
the fp32 weights. Prints one JSON line: the loss terms of every step (warm-up included), step times, images/s, peak RSS.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import peak_rss_mb, photo
from pipeline.loss.losses import CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT

# The training defaults (the loss weights are defined once, in pipeline/loss/losses.py; lr 1e-3 as every preset).
WEIGHTS = {"style_weight": STYLE_WEIGHT, "content_weight": CONTENT_WEIGHT, "tv_weight": TV_WEIGHT, "lr": 1e-3}
STYLE_SIZE = 256
ADDED_STYLE, REPLAY_WEIGHT = "skimage:immunohistochemistry", 200.0  # the `adapt-*` variants' new style


def reference_step(run: Path, style_path: Path) -> Callable[[torch.Tensor], dict[str, float]]:
    from benchmarks.reference import ReferenceNet, ReferenceTrainer, RefVGG, load_from_generator
    from pipeline.serve.model_io import load_model
    from pipeline.common.image_sources import load_style

    generator, _ = load_model(run / "checkpoints" / "last.ckpt")
    net = load_from_generator(ReferenceNet(), generator)
    trainer = ReferenceTrainer(net, RefVGG(), load_style(style_path, STYLE_SIZE), **WEIGHTS)
    return trainer.step


def ours_step(run: Path, style_path: Path, precision: str = "32-true",
              learn: str | None = None) -> Callable[[torch.Tensor], dict[str, float]]:
    """The project's step; with `learn`, a style added to the run's model as `make train FROM=` does
    (`new_styles`: the new rows only; `all`: every weight, the run's style replayed)."""
    from pipeline.model.checkpoint import generator_from_checkpoint, read_checkpoint
    from pipeline.train.adapt import replay_loss
    from pipeline.train.module import StyleTransferModule

    ckpt = run / "checkpoints" / "last.ckpt"
    if learn:  # another painting than the run's (one already in FROM is refused)
        module = StyleTransferModule(style_image=ADDED_STYLE, style_size=STYLE_SIZE, init_from=str(ckpt), learn=learn,
                                     replay_weight=REPLAY_WEIGHT if learn == "all" else 0.0, **WEIGHTS)
    else:
        generator = generator_from_checkpoint(read_checkpoint(ckpt))
        module = StyleTransferModule(style_image=str(style_path), style_size=STYLE_SIZE,
                                     strength_control=generator.has_strength, **WEIGHTS)
        module.generator.load_state_dict(generator.state_dict())
    module.train()
    opt = module.configure_optimizers()  # Adam as in training (the cpu preset's cosine schedule only sets its LR)

    def step(batch: torch.Tensor) -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            # what training_step logs and returns
            styles, strength = module.draw_conditions(len(batch))
            terms = module._terms(*module.with_strength_samples(batch, styles, strength))
            if module.replays:
                terms["total"] = terms["total"] + module.hparams.replay_weight * replay_loss(
                    module.generator, module.teacher, batch, module.first_new, strength)
        terms["total"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    return step


def main(argv: list[str] | None = None) -> int:
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()  # this worker's entry point (a no-op with $INSTYLE_REUSE_FREED_MEMORY=0: the reference)
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step")
    p.add_argument("--variant", choices=("reference", "ours", "adapt-new_styles", "adapt-all"), required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--style", type=Path, required=True)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true", help="ours only")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.variant == "reference" and args.precision != "32-true":
        p.error("the reference trains in fp32 only")
    learn = args.variant.removeprefix("adapt-") if args.variant.startswith("adapt-") else None
    step = reference_step(args.run, args.style) if args.variant == "reference" else ours_step(args.run, args.style,
                                                                                                  args.precision, learn)
    losses, times = [], []
    for i in range(args.warmup + args.steps):
        batch = photo(args.batch, args.size, args.size, seed=100 + i)
        start = time.perf_counter()
        losses.append(step(batch))
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"variant": args.variant, "precision": args.precision, "size": args.size, "batch": args.batch, "losses": losses,
                      "step_s": times, "median_step_s": median, "images_per_s": args.batch / median,
                      "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
