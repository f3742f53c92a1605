"""pipeline/train/callbacks.py and cli.py: the TensorBoard image grid (a real SummaryWriter), the teardown
bound, the presets and the CLI's own options, in-process."""

import io
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.data.stream_stages import ContentBatch
from pipeline.train.callbacks import ImageGridLogger, TeardownBound, batch_images
from pipeline.train.cli import BASE_CONFIG, preset_path, presets, run_cli
from pipeline.train.module import StyleTransferModule

from train_helpers import random_photos


# ----------------------------------------------------------------------------------------------
# callbacks.py

def test_batch_images_counts_the_images_of_a_content_batch() -> None:
    """ThroughputMonitor's samples per batch: the images, not the keys or the skipped count."""
    assert batch_images(ContentBatch(images=torch.zeros(5, 3, 8, 8), skipped=3, keys=["a"], failed_shards=2)) == 5


def test_teardown_bound_arms_at_train_end_and_disarms_at_teardown_or_on_exception() -> None:
    """Armed: a daemon timer of `seconds` running; teardown (or on_exception) cancels it, so it never
    fires; teardown without arming is harmless; a non-positive bound is refused."""
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="positive number of seconds"):
            TeardownBound(bad)
    for disarm in ("teardown", "on_exception"):
        bound = TeardownBound(seconds=600)
        bound.teardown(None, None, "fit")  # nothing armed yet
        bound.on_train_end(None, None)
        timer = bound._timer
        try:
            assert isinstance(timer, threading.Timer) and timer.daemon and timer.is_alive()
            assert timer.interval == 600
        finally:
            if disarm == "teardown":
                bound.teardown(None, None, "fit")
            else:
                bound.on_exception(None, None, RuntimeError("boom"))
        timer.join(timeout=5)
        assert not timer.is_alive() and timer.finished.is_set() and bound._timer is None


def test_teardown_bound_expiry_reports_every_threads_stack(capfd: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What an expired bound writes before it ends the process: the message and every thread's stack
    (the process exit itself is checked in a subprocess by test_train.py's slow test; here os._exit
    raises instead)."""
    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        raise Exited(code)

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, name="stuck-loader", daemon=True)
    other.start()
    monkeypatch.setattr(os, "_exit", fake_exit)
    try:
        with pytest.raises(Exited) as info:
            TeardownBound(seconds=42)._expire()
    finally:
        stop.set()
        other.join(5)
    assert info.value.args == (1,)
    err = capfd.readouterr().err
    assert "training ended 42 s ago and its teardown has not finished" in err
    assert "Current thread 0x" in err and "in _expire" in err  # this thread's stack ...
    assert "\nThread 0x" in err and "in wait" in err  # ... and the other one's, stuck in Event.wait


class FakeTrainer(SimpleNamespace):
    """The attributes ImageGridLogger reads of a Trainer: logger.experiment, is_global_zero,
    global_step and datamodule (whose val_dataloader is counted)."""


def _grid_trainer(log_dir: Path, photos: torch.Tensor, global_zero: bool = True) -> FakeTrainer:
    from torch.utils.tensorboard import SummaryWriter

    calls = []

    def val_dataloader() -> list[ContentBatch]:
        calls.append(1)
        return [ContentBatch(images=photos[i:i + 2], skipped=0, keys=[]) for i in range(0, len(photos), 2)]

    return FakeTrainer(logger=SimpleNamespace(experiment=SummaryWriter(str(log_dir))), is_global_zero=global_zero,
                       global_step=0, datamodule=SimpleNamespace(val_dataloader=val_dataloader), calls=calls)


def _images(log_dir: Path) -> dict[str, list[Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def _decode(event: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"), dtype=np.float32) / 255.0


def test_image_grid_is_content_then_each_style_one_row_per_photo(duo: StyleTransferModule, tmp_path: Path) -> None:
    """A real TensorBoard event file: the style images once, then grids of n_images rows × (content +
    one column per style), 2 px padding; the first column is the photo, the next ones the module's
    stylization in each style; logged at step 0, every `every_n_steps` and at train end; the
    validation photos read once; the generator's train/eval mode left as it was."""
    h, w = 32, 48
    photos = random_photos(5, h, w)
    trainer = _grid_trainer(tmp_path, photos)
    grid = ImageGridLogger(every_n_steps=2, n_images=4)  # 4 rows × 3 columns; 2 of the 3 val batches read
    duo.generator.train()
    try:
        grid.on_train_start(trainer, duo)
        assert duo.generator.training
        for step in (1, 2, 3):
            trainer.global_step = step
            grid.on_train_batch_end(trainer, duo, None, None, step - 1)
        duo.generator.eval()
        grid.on_train_end(trainer, duo)
        assert not duo.generator.training
    finally:
        duo.generator.train()
        trainer.logger.experiment.close()
    assert len(trainer.calls) == 1  # the fixed photos are read once

    images = _images(tmp_path)
    names = duo.style_names
    assert set(images) == {f"style/{n}" for n in names} | {"content|stylized"}
    for name, style in zip(names, duo.style_images):
        (event,) = images[f"style/{name}"]
        assert (event.height, event.width) == tuple(style.shape[2:]) and event.step == 0
        np.testing.assert_allclose(_decode(event), style[0].permute(1, 2, 0).numpy(), atol=1.5 / 255)
    grids = images["content|stylized"]
    assert [e.step for e in grids] == [0, 2, 3]  # train start, every 2nd step, train end
    columns, rows = 1 + len(names), 4
    for event in grids:
        assert (event.height, event.width) == (rows * (h + 2) + 2, columns * (w + 2) + 2)
    picture = _decode(grids[-1])
    with torch.no_grad():
        stylized = [duo(photos[:rows], torch.full((rows,), k, dtype=torch.long)) for k in range(len(names))]
    for r in range(rows):
        for c, expected in enumerate([photos[:rows], *stylized]):
            y, x = 2 + r * (h + 2), 2 + c * (w + 2)
            np.testing.assert_allclose(picture[y:y + h, x:x + w], expected[r].permute(1, 2, 0).numpy(),
                                       atol=1.5 / 255, err_msg=f"row {r} column {c}")


def test_image_grid_of_one_style_and_where_nothing_is_logged(single: StyleTransferModule, tmp_path: Path) -> None:
    """One style: the tag `style` and two columns; fewer photos than n_images: as many rows as photos;
    every_n_steps=0: only start and end. Nothing is written off rank 0, without a datamodule no grid
    (the style still), and a logger without add_image is ignored."""
    h, w = 24, 16
    trainer = _grid_trainer(tmp_path / "one", random_photos(2, h, w))
    grid = ImageGridLogger(every_n_steps=0, n_images=4)
    grid.on_train_start(trainer, single)
    trainer.global_step = 100
    grid.on_train_batch_end(trainer, single, None, None, 99)
    grid.on_train_end(trainer, single)
    trainer.logger.experiment.close()
    images = _images(tmp_path / "one")
    assert set(images) == {"style", "content|stylized"}
    assert [e.step for e in images["content|stylized"]] == [0, 100]
    assert all((e.height, e.width) == (2 * (h + 2) + 2, 2 * (w + 2) + 2) for e in images["content|stylized"])

    off_zero = _grid_trainer(tmp_path / "rank1", random_photos(2, h, w), global_zero=False)
    ImageGridLogger(every_n_steps=1, n_images=2).on_train_start(off_zero, single)
    ImageGridLogger(every_n_steps=1, n_images=2).on_train_end(off_zero, single)
    off_zero.logger.experiment.close()
    assert _images(tmp_path / "rank1") == {} and off_zero.calls == []

    no_data = _grid_trainer(tmp_path / "nodata", random_photos(2, h, w))
    no_data.datamodule = None
    ImageGridLogger(every_n_steps=1, n_images=2).on_train_start(no_data, single)
    no_data.logger.experiment.close()
    assert set(_images(tmp_path / "nodata")) == {"style"}

    no_writer = FakeTrainer(logger=None, is_global_zero=True, global_step=0, datamodule=None)
    ImageGridLogger().on_train_start(no_writer, single)  # no logger: nothing to do, no error
    ImageGridLogger().on_train_end(no_writer, single)


# ----------------------------------------------------------------------------------------------
# cli.py

def test_presets_are_the_overlays_besides_base_and_unknown_ones_are_named() -> None:
    """The presets the Makefile offers (cpu, gpu, paper), sorted, base excluded; base or an unknown
    name is a clear error listing them."""
    names = presets()
    assert {"cpu", "gpu", "paper"} <= set(names) and "base" not in names and names == sorted(names)
    for name in names:
        path = preset_path(name)
        assert path.is_file() and path.name == f"{name}.yaml" and path.parent == BASE_CONFIG.parent
    for bad in ("base", "tpu", "CPU"):
        with pytest.raises(ValueError) as info:
            preset_path(bad)
        assert f"unknown preset {bad!r}" in str(info.value) and ", ".join(names) in str(info.value)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """LightningCLI in-process: its relative paths under tmp_path, no pytest arguments in sys.argv, and
    torch's process-wide matmul precision restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline"])
    precision = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(precision)


def test_cli_resolves_base_then_preset_then_command_line(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """`fit --print_config` in-process (parse only): base.yaml's settings where the preset is silent,
    the preset's where it speaks (its top-level process options included), the command line last."""
    gpu = yaml.safe_load(preset_path("gpu").read_text())
    base = yaml.safe_load(BASE_CONFIG.read_text())
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", "--print_config", "--config", str(preset_path("gpu")), "--model.style_image=skimage:coffee",
                 "--progress_bar_refresh_rate=7", "--trainer.max_steps=123"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["float32_matmul_precision"] == gpu["float32_matmul_precision"] == "high"
    assert printed["progress_bar_refresh_rate"] == 7 and printed["trainer"]["max_steps"] == 123
    assert printed["trainer"]["precision"] == gpu["trainer"]["precision"]
    assert printed["trainer"]["log_every_n_steps"] == base["trainer"]["log_every_n_steps"]  # gpu.yaml is silent
    assert printed["model"]["strength_control"] is True and printed["seed_everything"] == 0
    assert printed["model"]["lr_schedule"] == "cosine" and printed["model"]["style_image"] == "skimage:coffee"
    assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == [c["class_path"] for c in base["trainer"]["callbacks"]]


def test_cli_process_options_are_checked_and_applied_before_anything_is_built(cli_env: None) -> None:
    """float32_matmul_precision is set on torch before the classes are built; a progress-bar refresh
    rate below 1 is refused there (before the model loads its VGG); an unknown precision is a usage
    error."""
    torch.set_float32_matmul_precision("highest")
    with pytest.raises(ValueError, match="progress_bar_refresh_rate must be ≥ 1, got 0"):
        run_cli(["--float32_matmul_precision=medium", "--progress_bar_refresh_rate=0",
                 "--model.style_image=skimage:coffee"], run=False)
    assert torch.get_float32_matmul_precision() == "medium"
    with pytest.raises(SystemExit) as info:
        run_cli(["--float32_matmul_precision=low", "--model.style_image=skimage:coffee"], run=False)
    assert info.value.code == 2
