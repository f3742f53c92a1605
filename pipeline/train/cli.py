"""LightningCLI entry: `python -m pipeline fit --config pipeline/train/configs/cpu.yaml --model.style_image=...`.

Every run starts from `configs/base.yaml` (loaded before any `--config`), so a preset is a small
overlay that states only what it changes, and `--config` may be given several times.
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from pipeline.data.datamodule import ContentDataModule
from pipeline.serve.memory import reuse_freed_memory
from pipeline.train.module import StyleTransferModule

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def presets() -> list[str]:
    """Names of the preset overlays (configs/*.yaml except base)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")


def preset_path(name: str) -> Path:
    """configs/<name>.yaml, or a clear error listing the presets."""
    path = CONFIG_DIR / f"{name}.yaml"
    if name == "base" or not path.is_file():
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(presets())}")
    return path


def run_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run LightningCLI with the style module and content data module fixed (no class_path needed).
    `run=False`: no subcommand in `args`; only parse and instantiate the trainer, model and data."""
    reuse_freed_memory()  # a training step allocates ~2 GB afresh otherwise (pipeline.serve.memory)
    base = {"default_config_files": [str(BASE_CONFIG)]}
    return LightningCLI(StyleTransferModule, ContentDataModule, args=args, run=run,
                        parser_kwargs={cmd: base for cmd in SUBCOMMANDS} if run else base,
                        save_config_kwargs={"overwrite": True},  # a resumed run rewrites its resolved config
                        seed_everything_default=0)
