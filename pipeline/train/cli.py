"""LightningCLI entry: `python -m pipeline fit --config pipeline/train/configs/cpu.yaml --model.style_image=...`.

Every run starts from `configs/base.yaml` (loaded before any `--config`), so a preset is a small
overlay that states only what it changes, and `--config` may be given several times.

Three settings are top-level options, so a preset can state them: `float32_matmul_precision`
(torch's, before anything is built), `progress_bar_refresh_rate` (the bar's host reads of the logged
losses are syncs: the gpu preset refreshes at its log interval) and `native_bf16` (the cpu preset: with
`trainer.precision` left unset, a CPU run trains in bf16-mixed where the CPU has native bf16 units,
AVX512-BF16 or AMX, and in 32-true elsewhere; bf16 without them is many times slower, docs/benchmarks.md).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from pipeline.data.datamodule import ContentDataModule
from pipeline.common.memory import reuse_freed_memory
from pipeline.common.cpu import native_bf16
from pipeline.train.module import StyleTransferModule

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


NOT_PRESETS = ("base", "adapt", "distill")  # loaded before every preset; added after one by FROM= / `make distill`


def presets() -> list[str]:
    """Names of the preset overlays (configs/*.yaml except base and adapt)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem not in NOT_PRESETS)


def preset_path(name: str) -> Path:
    """configs/<name>.yaml, or a clear error listing the presets."""
    path = CONFIG_DIR / f"{name}.yaml"
    if name in NOT_PRESETS or not path.is_file():
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(presets())}")
    return path


class TrainingCLI(LightningCLI):
    """LightningCLI with the process-wide options of the module docstring."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--float32_matmul_precision", type=str, default="highest",
                            choices=["highest", "high", "medium"],
                            help="torch.set_float32_matmul_precision: `high` lets fp32 matmuls use TF32 on GPUs")
        parser.add_argument("--native_bf16", type=bool, default=False,
                            help="with trainer.precision unset, train a CPU run in bf16-mixed where the CPU has "
                                 "native bf16 units (AVX512-BF16, AMX), else in 32-true")
        parser.add_argument("--progress_bar_refresh_rate", type=int, default=1,
                            help="steps between progress-bar refreshes (each reads the logged losses back)")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        torch.set_float32_matmul_precision(config.float32_matmul_precision)
        trainer = config.trainer
        on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
        if config.native_bf16 and trainer.precision is None and on_cpu:
            trainer.precision = "bf16-mixed" if native_bf16("cpu") else "32-true"
            print(f"precision: {trainer.precision} ({'this CPU has' if native_bf16('cpu') else 'no'} native bf16 units; "
                  "--trainer.precision sets it)", file=sys.stderr)
        rate = config.progress_bar_refresh_rate
        if rate < 1:
            raise ValueError(f"progress_bar_refresh_rate must be ≥ 1, got {rate}")
        if self.subcommand == "fit" and not config.ckpt_path:
            refuse_trained_run(trainer.logger)
        if config.trainer.enable_progress_bar is not False:  # Lightning refuses a bar it was told not to show
            self.trainer_defaults["callbacks"] = [TQDMProgressBar(refresh_rate=rate)]


def refuse_trained_run(logger: Any) -> None:
    """A new run never writes into a run folder that holds checkpoints (a `make train` repeated with
    the same NAME, or a FROM run named like its source): exit with the choices instead."""
    args = getattr(logger, "init_args", None)
    save_dir = getattr(args, "save_dir", None)
    if not save_dir:  # no logger, or one that is not the configured TensorBoardLogger
        return
    folder = Path(str(save_dir)) / str(getattr(args, "name", "") or "") / str(getattr(args, "version", "") or "")
    found = sorted((folder / "checkpoints").glob("*.ckpt"))
    if found:
        sys.exit(f"error: the run folder {folder} already holds checkpoints ({found[0].name}, …): choose another "
                 f"NAME, move it away, or resume it with CKPT={found[-1]}")


def run_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run LightningCLI with the style module and content data module fixed (no class_path needed).
    `run=False`: no subcommand in `args`; only parse and instantiate the trainer, model and data."""
    reuse_freed_memory()  # a training step allocates ~2 GB afresh otherwise (pipeline.common.memory)
    base = {"default_config_files": [str(BASE_CONFIG)]}
    return TrainingCLI(StyleTransferModule, ContentDataModule, args=args, run=run,
                        parser_kwargs={cmd: base for cmd in SUBCOMMANDS} if run else base,
                        save_config_kwargs={"overwrite": True},  # a resumed run rewrites its resolved config
                        seed_everything_default=0)
