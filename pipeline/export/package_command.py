"""Package a run's generator for distribution: `python -m pipeline package --run runs/NAME --out models/NAME`.

Writes `generator.safetensors` (fp16 weights and the run's description, `pipeline.model.packaged_format`),
and measures what fp16 costs: every style of the packaged generator against the checkpoint's fp32 one
on scikit-image's `astronaut`, in 8-bit levels. A packaged model then loads wherever a checkpoint does
(`stylize --model NAME`, `export --ckpt`), without the run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.model.checkpoint import generator_from_checkpoint, read_checkpoint, style_names
from pipeline.model.packaged_format import WEIGHTS_FILE, read_packaged, write_packaged
from pipeline.model.style_fingerprints import style_fingerprints

PROBE_SIDE = 256  # the probe photo's side: large enough for every layer's statistics, quick on a CPU


def probe_photo(side: int = PROBE_SIDE) -> torch.Tensor:
    """(1, 3, side, side) scikit-image's astronaut in [0, 1], area-downscaled: a public-domain photo every
    install has."""
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(side, side), mode="area")


@torch.inference_mode()
def fp16_levels(ckpt: dict, packaged: dict) -> dict[str, tuple[int, float]]:
    """Per style: (max, mean) |difference| in 8-bit levels between the two generators' outputs."""
    reference, candidate = generator_from_checkpoint(ckpt), generator_from_checkpoint(packaged)
    photo, names = probe_photo(), style_names(ckpt)
    levels = {}
    for i, name in enumerate(names):
        style = [F.one_hot(torch.tensor([i]), len(names)).float()] if len(names) > 1 else []
        a, b = (torch.round(g(photo, *style) * 255) for g in (reference, candidate))
        diff = (a - b).abs()
        levels[name] = (int(diff.max()), float(diff.mean()))
    return levels


def command(*, run: Path, out: Path, ckpt: Path | None = None) -> int:
    """Write a run's generator as fp16 safetensors (OUT/generator.safetensors) and report the fp16 difference.

    Args:
        run: run directory, e.g. runs/NAME.
        out: folder to write into, e.g. models/NAME.
        ckpt: checkpoint to package (default: RUN/checkpoints/last.ckpt).
    """
    ckpt_path = ckpt or run / "checkpoints" / "last.ckpt"
    try:
        checkpoint = read_checkpoint(ckpt_path)
        # what tells a painting added twice (FROM=): found again where the run did not store it
        checkpoint["style_fingerprints"] = style_fingerprints(checkpoint)
        path = write_packaged(checkpoint, out / WEIGHTS_FILE, source=f"{run.name}/{ckpt_path.name}")
        levels = fp16_levels(checkpoint, read_packaged(path))
    except (FileNotFoundError, ValueError) as e:
        print(f"package failed: {e}", file=sys.stderr)
        return 1
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, step {checkpoint.get('global_step')}")
    for name, (worst, mean) in levels.items():
        print(f"  {name}: fp16 vs fp32 on astronaut {PROBE_SIDE}²: max {worst}, mean {mean:.3f} levels")
    return 0
