"""Checkpoint writes that a crash cannot tear: `pipeline.common.files.atomic_write` (a temporary
file beside the target, flushed to disk, then renamed over it).

Lightning's own write goes through an fsspec transaction whose temporary file lives in the
system temp dir; when that is another file system (tmpfs /tmp), the final move is a copy, and a
SIGKILL during the copy leaves a truncated `last.ckpt` — the one file a resume needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pipeline.common.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO for local paths with an atomic write-and-rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        target = Path(path)
        if "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(target) as tmp:
            torch.save(checkpoint, tmp)
