"""LightningCLI entry: `python -m pipeline fit --config pipeline/configs/cpu.yaml --model.style_image=...`."""
from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from pipeline.datamodule import ContentDataModule
from pipeline.module import StyleTransferModule


def run_cli(args: list[str] | None = None) -> LightningCLI:
    """Run LightningCLI with the style module and content data module fixed (no class_path needed)."""
    return LightningCLI(StyleTransferModule, ContentDataModule, args=args,
                        save_config_kwargs={"overwrite": True},  # a resumed run rewrites its resolved config
                        seed_everything_default=0)
