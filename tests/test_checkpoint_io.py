"""Atomic checkpoint writes: a failed or interrupted save never damages the previous file."""
from __future__ import annotations

import sys
import threading

import pytest
import torch
import yaml

from pipeline.common.cpu import native_bf16
from pipeline.train.checkpoint_io import AtomicCheckpointIO
from pipeline.train.cli import preset_path, presets, run_cli


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


@pytest.mark.slow
@pytest.mark.parametrize("preset", presets())
def test_every_preset_builds_a_trainer_with_atomic_checkpoints(preset, tmp_path, style_image, vgg_weights, monkeypatch):
    """Each preset (base.yaml + overlay) through the real LightningCLI, instantiated, not run: the
    trainer writes checkpoints atomically and has the base's callbacks; precision and data are the preset's."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor

    from pipeline.train.callbacks import ImageGridLogger, TeardownBound

    monkeypatch.chdir(tmp_path)  # the logger's save_dir (runs/) is relative
    monkeypatch.setattr(sys, "argv", ["pipeline"])  # LightningCLI warns about pytest's own arguments
    expected = yaml.safe_load(preset_path(preset).read_text())
    precision, benchmark = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    try:
        cli = run_cli(["--config", str(preset_path(preset)), "--trainer.accelerator=cpu", "--trainer.devices=1",
                       f"--model.style_image={style_image}", f"--data.data_dir={tmp_path}"], run=False)
        assert torch.get_float32_matmul_precision() == expected.get("float32_matmul_precision", "highest")
        assert torch.backends.cudnn.benchmark is expected["trainer"].get("benchmark", False)
    finally:  # process-wide settings: the other tests keep torch's defaults
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.benchmark = benchmark
    trainer = cli.trainer
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert any(c.filename == "last" and c.monitor is None for c in checkpoints)
    assert any(c.monitor == "val/total" for c in checkpoints)
    assert trainer.progress_bar_callback.refresh_rate == expected.get("progress_bar_refresh_rate", 1)
    for kind in (LearningRateMonitor, ThroughputMonitor, TeardownBound, ImageGridLogger):
        assert any(isinstance(c, kind) for c in trainer.callbacks), kind.__name__
    if expected.get("native_bf16"):  # the cpu preset: bf16-mixed where the CPU has native bf16 units
        assert "precision" not in expected["trainer"]
        assert trainer.precision == ("bf16-mixed" if native_bf16("cpu") else "32-true")
    else:
        assert trainer.precision == expected["trainer"]["precision"]
    assert trainer.max_steps == expected["trainer"]["max_steps"]
    assert dict(cli.datamodule.hparams) == {**cli.datamodule.hparams, **expected["data"], "data_dir": str(tmp_path)}
    assert cli.model.hparams.style_size == expected["model"]["style_size"]


@pytest.mark.slow
def test_the_cpu_presets_precision_follows_the_cpu_unless_given(tmp_path, style_image, vgg_weights, monkeypatch):
    """cpu preset: bf16-mixed only on a CPU with native bf16 units; an explicit precision (or
    --native_bf16=false) wins; the resolved precision is what the saved config holds."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline"])
    base = ["--config", str(preset_path("cpu")), f"--model.style_image={style_image}", f"--data.data_dir={tmp_path}"]
    cases = [([], "bf16-mixed" if native_bf16("cpu") else "32-true"), (["--trainer.precision=32-true"], "32-true"),
             (["--native_bf16=false"], "32-true"), (["--trainer.precision=bf16-mixed"], "bf16-mixed")]
    for extra, want in cases:
        cli = run_cli(base + extra, run=False)
        assert cli.trainer.precision == want, extra
        assert cli.config.trainer.precision in (want, None if "--native_bf16=false" in extra else want)


@pytest.mark.slow
@pytest.mark.parametrize("preset", presets())
def test_every_preset_prints_its_resolved_config(preset, tmp_path):
    """`python -m pipeline fit --print_config --config <preset>`, as a user checks a run before starting
    it: base.yaml + the overlay resolve, and the printed config is the preset's, callbacks included."""
    import subprocess

    res = subprocess.run([sys.executable, "-m", "pipeline", "fit", "--print_config", "--config", str(preset_path(preset)),
                          "--model.style_image=skimage:coffee"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    printed, overlay = yaml.safe_load(res.stdout), yaml.safe_load(preset_path(preset).read_text())
    for section in ("trainer", "model", "data"):
        for key, value in (overlay.get(section) or {}).items():
            assert printed[section][key] == value, (section, key)
    assert printed["model"]["style_image"] == "skimage:coffee"
    names = [c["class_path"].rsplit(".", 1)[1] for c in printed["trainer"]["callbacks"]]
    assert names.count("ModelCheckpoint") == 2 and "ImageGridLogger" in names
