"""Atomic checkpoint writes: a failed or interrupted save never damages the previous file."""
from __future__ import annotations

import threading

import pytest
import torch

from pipeline.train.checkpoint_io import AtomicCheckpointIO


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    assert io.load_checkpoint(path, weights_only=True)["global_step"] == 1
    with pytest.raises(Exception):  # a lock cannot be pickled: torch.save fails halfway through
        io.save_checkpoint({"global_step": 2, "bad": threading.Lock()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    io.save_checkpoint({"global_step": 3}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 3


def test_presets_enable_atomic_checkpoints():
    from pathlib import Path
    for preset in ("cpu", "gpu", "paper"):
        text = (Path(__file__).resolve().parents[1] / "pipeline" / "configs" / f"{preset}.yaml").read_text()
        assert "pipeline.train.checkpoint_io.AtomicCheckpointIO" in text, preset
