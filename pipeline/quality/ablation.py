"""`make ablation STYLE=<image>`: the paper's comparisons as one command.

Trains, with the same preset, step budget and data: residual × {instance, batch}, multi-scale ×
{instance, batch}, and residual instance-norm with zero instead of reflection padding; then
evaluates them all on the validation photos (plus the Gatys baseline) and writes
`reports/ablation-<style>/` (metrics table in markdown + JSON, figures). A run whose
`last.ckpt` already reached the budget is reused, not retrained.

    python -m pipeline.quality.ablation --style ../shared/assets/styles/starry_night.jpg \
        --data data/shards/bsds --content ../shared/assets/content/val --steps 800
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

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


def run_name(style: Path, v: Variant) -> str:
    return f"ablation-{style.stem}-{v.key}"


def finished_step(ckpt: Path) -> int:
    """global_step of a checkpoint, or -1 if there is none (or it cannot be read)."""
    if not ckpt.exists():
        return -1
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 - a broken checkpoint means: train again
        return -1


def train_variant(style: Path, v: Variant, data: Path | None, preset: str, steps: int, runs: Path) -> Path:
    """Train one variant (or resume / reuse it); returns its run folder."""
    name = run_name(style, v)
    run = runs / name
    ckpt = run / "checkpoints" / "last.ckpt"
    step = finished_step(ckpt)
    if step >= steps:
        print(f"[ablation] {name}: reusing (step {step})", flush=True)
        return run
    cmd = [sys.executable, "-m", "pipeline", "fit", "--config", str(preset_path(preset)),
           f"--model.style_image={style}", f"--model.arch={v.arch}", f"--model.norm={v.norm}",
           f"--model.padding={v.padding}", f"--trainer.max_steps={steps}",
           f"--trainer.logger.init_args.save_dir={runs}", f"--trainer.logger.init_args.name={name}",
           "--trainer.enable_progress_bar=false"]
    if data is not None:
        cmd.append(f"--data.data_dir={data}")
    if step >= 0:
        cmd.append(f"--ckpt_path={ckpt}")  # an interrupted run continues where it stopped
    print(f"[ablation] {name}: training {steps} steps ({v.label})", flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=Path.cwd())
    print(f"[ablation] {name}: trained in {time.monotonic() - start:.0f} s", flush=True)
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.quality.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--style", type=Path, required=True, help="style image")
    p.add_argument("--data", type=Path, default=None, help="shard folder (default: the scikit-image sample set)")
    p.add_argument("--content", type=Path, default=None,
                   help="folder of validation photos to evaluate on (default: scikit-image's photos)")
    p.add_argument("--preset", default="cpu", choices=("cpu", "gpu", "paper"))
    p.add_argument("--steps", type=int, default=800, help="training steps per variant (the same for all)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/ablation-<style>)")
    p.add_argument("--eval-size", type=int, default=256, help="evaluation resolution (short side)")
    p.add_argument("--limit", type=int, default=8, help="validation photos evaluated")
    p.add_argument("--gatys-iters", default="50,100,300", help="Gatys checkpoints (iterations)")
    p.add_argument("--train-only", action="store_true", help="train (or reuse) the variants, skip the report")
    p.add_argument("--only", default=None, help=f"comma-separated variants to train ({', '.join(v.key for v in VARIANTS)})")
    args = p.parse_args(argv)
    if not args.style.is_file():
        p.error(f"style image {args.style} does not exist")
    if args.steps < 1:
        p.error("--steps must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = VARIANTS if args.only is None else [v for v in VARIANTS if v.key in args.only.split(",")]
    if not chosen:
        raise SystemExit(f"--only {args.only}: no such variant; choose from {', '.join(v.key for v in VARIANTS)}")
    runs = [train_variant(args.style, v, args.data, args.preset, args.steps, args.runs) for v in chosen]
    if args.train_only:
        return 0
    from pipeline.quality.ablation_report import write_report
    out = args.out or Path("reports") / f"ablation-{args.style.stem}"
    write_report(args, list(zip(chosen, runs)), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
