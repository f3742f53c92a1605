"""Helpers of the training tests (no tests here): small files, photos, a recorder of what a LightningModule
logs outside a fit loop, and tiny real runs of `python -m pipeline fit` with their TensorBoard scalars."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.train.module import StyleTransferModule

ROOT = Path(__file__).resolve().parents[1]
# the cpu preset at toy sizes: a fit of a few steps in seconds (the `shards` fixture's data, tests/conftest.py)
TINY = ["--config", str(ROOT / "pipeline/train/configs/cpu.yaml"), "--data.image_size=64", "--data.resize=80",
        "--data.val_size=64", "--data.batch_size=2", "--data.num_workers=0", "--model.style_size=128",
        "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]


def fit_cmd(tmp_path: Path, style: Path, *extra: str, name: str = "tiny") -> list[str]:
    """`python -m pipeline fit` with TINY on tmp_path/shards, its run in tmp_path/runs/<name>."""
    return [sys.executable, "-m", "pipeline", "fit", *TINY, f"--model.style_image={style}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--trainer.logger.init_args.name={name}",
            f"--data.data_dir={tmp_path / 'shards'}", *extra]


def fit(tmp_path: Path, style: Path, *extra: str, name: str = "tiny") -> subprocess.CompletedProcess:
    """Run `fit_cmd`; a failure fails the test with the command and its stderr."""
    cmd = fit_cmd(tmp_path, style, *extra, name=name)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n--- stderr ---\n{res.stderr[-4000:]}"
    return res


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar of a run; [] when it was never logged."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0}).Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


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
