"""FLOPs of one image through a training or validation step, for Lightning's ThroughputMonitor (FLOP/s in
TensorBoard): counted by Lightning's `measure_flops` once per (stage, size), on a copy of the generator."""
from __future__ import annotations

import copy

import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch import nn

from pipeline.train.regularizers import stability_loss


def image_flops(generator: nn.Module, loss: nn.Module, images: torch.Tensor, backward: bool, n_styles: int,
                stability_weight: float, cache: dict[tuple[bool, int, int], int], teacher: nn.Module | None = None) -> int:
    """FLOPs of one image of `images`' size through a training step (generator, loss, backward; with the
    stability term's two more generator passes when it is on; distilling, the `teacher`'s pass and the Grams
    of its output, pipeline/train/distill.py) or a validation step (forward only). Counted
    once per size into `cache`, on a copy of `generator` (its state and the RNG untouched)."""
    key = (backward, *images.shape[-2:])
    if key not in cache:
        generator, x = copy.deepcopy(generator), images[:1].detach()
        devices = [x.device] if x.device.type == "cuda" else []
        styles = torch.zeros(1, dtype=torch.long, device=x.device) if n_styles > 1 else None

        def step() -> torch.Tensor:
            output = generator(x)
            if teacher is not None:  # a distillation: the teacher's output and its Grams are the style targets
                with torch.no_grad():
                    grams = loss.grams(teacher(x))
                return loss(output, x, style_targets=grams)["total"]
            total = loss(output, x, styles)["total"]
            if backward and stability_weight > 0:
                total = total + stability_loss(generator, x, output)
            return total

        with torch.random.fork_rng(devices), torch.set_grad_enabled(backward):
            cache[key] = measure_flops(generator, step, (lambda total: total) if backward else None)
    return cache[key]
