"""Helpers of the training package's unit tests (no tests here): small files, photos, and a recorder of what
a LightningModule logs outside a fit loop."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.train.module import StyleTransferModule


def touch(path: Path) -> Path:
    """A file that exists (style_specs checks existence and names, it does not decode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")
    return path


def random_photos(b: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


class LogRecorder:
    """Stands in for Lightning's `self.log` / `self.log_dict` (which need a running fit loop): records
    what the module logs."""

    def __init__(self) -> None:
        self.logged: dict[str, Any] = {}

    def log(self, name: str, value: Any, **kwargs: Any) -> None:
        self.logged[name] = value

    def log_dict(self, values: dict[str, Any], **kwargs: Any) -> None:
        self.logged.update(values)


def record_logs(module: StyleTransferModule, monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    rec = LogRecorder()
    monkeypatch.setattr(module, "log", rec.log)
    monkeypatch.setattr(module, "log_dict", rec.log_dict)
    return rec
