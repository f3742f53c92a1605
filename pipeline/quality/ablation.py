"""`make ablation STYLE=<image>`: the paper's comparisons as one command.

Trains, with the same preset, step budget and data: residual × {instance, batch}, multi-scale ×
{instance, batch}, and residual instance-norm with zero instead of reflection padding; then
evaluates them all on the validation photos (plus the Gatys baseline) and writes
`reports/ablation-<style>/` (metrics table in markdown + JSON, figures). A run whose
`last.ckpt` already reached the budget is reused, not retrained.

    python -m pipeline ablation --style ../shared/assets/styles/starry_night.jpg \
        --data data/shards/bsds --content ../shared/assets/content/val --steps 800
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.quality.gatys import GATYS_ITERS
from pipeline.common.image_sources import image_exists, style_name
from pipeline.train.cli import preset_path



@dataclass(frozen=True)
class Variant:
    key: str  # short id used in run names and tables
    arch: str
    norm: str
    padding: str

    @property
    def label(self) -> str:
        return f"{self.arch} / {self.norm} norm / {self.padding} padding"


VARIANTS = [
    Variant("res-in", "residual", "instance", "reflect"),
    Variant("res-bn", "residual", "batch", "reflect"),
    Variant("ms-in", "multiscale", "instance", "reflect"),
    Variant("ms-bn", "multiscale", "batch", "reflect"),
    Variant("res-in-zero", "residual", "instance", "zero"),
]


def style_stem(style: str | Path) -> str:
    """The name a style goes by in run and report names: its file stem, or the skimage image's name."""
    return style_name(style)


def run_name(style: str | Path, v: Variant) -> str:
    return f"ablation-{style_stem(style)}-{v.key}"


def finished_step(ckpt: Path) -> int:
    """global_step of a checkpoint, or -1 if there is none (or it cannot be read)."""
    if not ckpt.exists():
        return -1
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 - a broken checkpoint means: train again
        return -1


def train_variant(style: str, v: Variant, data: Path | None, preset: str, steps: int, runs: Path,
                  fit_args: list[str] | None = None) -> Path:
    """Train one variant (or resume / reuse it); returns its run folder. The paper's variants have no
    strength control, whatever the preset's default; `fit_args` go last (they override the rest)."""
    name = run_name(style, v)
    run = runs / name
    ckpt = run / "checkpoints" / "last.ckpt"
    step = finished_step(ckpt)
    if step >= steps:
        print(f"[ablation] {name}: reusing (step {step})", flush=True)
        return run
    cmd = [sys.executable, "-m", "pipeline", "fit", "--config", str(preset_path(preset)),
           f"--model.style_image={style}", f"--model.arch={v.arch}", f"--model.norm={v.norm}",
           # the paper's variants: no strength path, whatever the preset's default
           f"--model.padding={v.padding}", "--model.strength_control=false", f"--trainer.max_steps={steps}",
           f"--trainer.logger.init_args.save_dir={runs}", f"--trainer.logger.init_args.name={name}",
           "--trainer.enable_progress_bar=false"]
    if data is not None:
        cmd.append(f"--data.data_dir={data}")
    if step >= 0:
        cmd.append(f"--ckpt_path={ckpt}")  # an interrupted run continues where it stopped
    cmd += fit_args or []
    print(f"[ablation] {name}: training {steps} steps ({v.label})", flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=Path.cwd())
    print(f"[ablation] {name}: trained in {time.monotonic() - start:.0f} s", flush=True)
    return run


def command(*, style: str, data: Path | None = None, content: Path | None = None, preset: str = "cpu",
            steps: int = 800, runs: Path = Path("runs"), out: Path | None = None, eval_size: int = 256, limit: int = 8,
            gatys_iters: list[int] = list(GATYS_ITERS), train_only: bool = False, only: list[str] | None = None,
            fit_args: list[str] | None = None) -> int:
    """The paper's comparisons: five variants trained with the same budget, evaluated, reported.

    Args:
        style: style image: a file or skimage:<name>.
        data: shard folder (default: the scikit-image sample set).
        content: folder of validation photos to evaluate on (default: scikit-image's photos).
        preset: training preset (pipeline/train/configs/<preset>.yaml).
        steps: training steps per variant (the same for all).
        runs: runs folder.
        out: report folder (default: reports/ablation-<style>).
        eval_size: evaluation resolution (short side), px.
        limit: validation photos evaluated.
        gatys_iters: Gatys iteration counts recorded on the first 2 photos ([] for none).
        train_only: train (or reuse) the variants, skip the report.
        only: variants to train (default: all), e.g. '[res-in,res-bn]'.
        fit_args: more training options for every variant, after the preset's (they win), e.g.
            '[--trainer.accelerator=gpu,--data.num_workers=8]'.
    """
    keys = [v.key for v in VARIANTS]
    problems = [f"style image {style} does not exist"] if not image_exists(style) else []
    if steps < 1:
        problems.append("--steps must be ≥ 1")
    try:
        preset_path(preset)
    except ValueError as e:
        problems.append(str(e))
    unknown = sorted(set(only or []) - set(keys))
    if unknown:
        problems.append(f"--only {unknown}: no such variant; choose from {', '.join(keys)}")
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    chosen = [v for v in VARIANTS if only is None or v.key in only]
    trained = [train_variant(style, v, data, preset, steps, runs, fit_args) for v in chosen]
    if train_only:
        return 0
    from pipeline.quality.ablation_report import write_report
    write_report(style, list(zip(chosen, trained)), out or Path("reports") / f"ablation-{style_stem(style)}", content=content,
                 limit=limit, gatys_iters=gatys_iters, eval_size=eval_size, preset=preset, steps=steps)
    return 0
