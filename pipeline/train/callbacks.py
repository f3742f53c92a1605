"""Training callbacks of our own: TensorBoard image grids, a bound on the end of a run, and the
batch-size function Lightning's `ThroughputMonitor` needs for our batches. Which callbacks a run uses (checkpoints, monitors,
grids) is policy, set in `pipeline/train/configs/base.yaml`, not in code."""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
from typing import Any

import lightning as L
import torch
from torchvision.utils import make_grid


def batch_images(batch: Any) -> int:
    """Images in a `ContentBatch` (what `ThroughputMonitor(batch_size_fn=...)` counts as samples)."""
    return len(batch.images)


class TeardownBound(L.Callback):
    """Ends the process if a fit's teardown (data loaders, workers, process group) is still running
    `seconds` after training ended: the thread stacks go to stderr and the process exits with status 1,
    instead of holding its GPUs until a cluster's wall-clock limit. The checkpoints are written
    before it is armed (at train end); a fit that returns in time disarms it."""

    def __init__(self, seconds: float = 120.0):
        if seconds <= 0:
            raise ValueError(f"TeardownBound(seconds={seconds}): give a positive number of seconds")
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # the caller handles the exception: no bound on it

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        print(f"training ended {self.seconds:.0f} s ago and its teardown has not finished; the checkpoints are "
              "written. Where each thread is stuck:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)  # a hung teardown cannot be unwound from another thread


class ImageGridLogger(L.Callback):
    """The style image(s) once, then `n_images` fixed validation photos beside their stylization in
    every style (one row per photo: content | style 1 | style 2 | ...) every `every_n_steps` (0: only
    at the start and the end), so a run can be watched converging."""

    def __init__(self, every_n_steps: int = 100, n_images: int = 4):
        self.every_n_steps, self.n_images = every_n_steps, n_images
        self._fixed: torch.Tensor | None = None

    def _writer(self, trainer: L.Trainer):
        exp = getattr(trainer.logger, "experiment", None)
        return exp if hasattr(exp, "add_image") else None

    def _fixed_batch(self, trainer: L.Trainer) -> torch.Tensor | None:
        if self._fixed is None and trainer.datamodule is not None:
            images = []
            for batch in trainer.datamodule.val_dataloader():
                images.extend(batch.images)
                if len(images) >= self.n_images:
                    break
            self._fixed = torch.stack(images[: self.n_images]) if images else None
        return self._fixed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self._writer(trainer)
        if writer is not None and trainer.is_global_zero:
            if len(pl_module.style_images) == 1:
                writer.add_image("style", pl_module.style_images[0][0].float().cpu(), global_step=trainer.global_step)
            else:
                # the images of the styles the loss knows (with FROM: the new ones, after FROM's)
                for name, image in zip(pl_module.style_names[pl_module.first_new:], pl_module.style_images):
                    writer.add_image(f"style/{name}", image[0].float().cpu(), global_step=trainer.global_step)
            self._log(trainer, pl_module)  # step-0 grid: what training starts from

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    @torch.no_grad()
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self._writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        fixed = self._fixed_batch(trainer)
        if fixed is None:
            return
        was_training = pl_module.generator.training
        pl_module.generator.eval()  # what the exported model will do: instance norm is live anyway
        x = fixed.to(pl_module.device)
        columns = [fixed.float()]
        for k in range(len(pl_module.style_names)):
            styles = torch.full((len(x),), k, dtype=torch.long, device=x.device) if len(pl_module.style_names) > 1 else None
            columns.append(pl_module(x, styles).float().cpu())
        pl_module.generator.train(was_training)
        # One row per photo: content | its stylization in each style.
        rows = torch.stack(columns, dim=1).flatten(0, 1)
        writer.add_image("content|stylized", make_grid(rows, nrow=len(columns), padding=2), global_step=trainer.global_step)
