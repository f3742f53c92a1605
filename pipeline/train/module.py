"""LightningModule: one generator trained for one fixed style image with the perceptual loss."""
from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.data.samples import ContentBatch
from pipeline.loss.losses import (CONTENT_LAYER, CONTENT_WEIGHT, STYLE_LAYERS, STYLE_WEIGHT, TV_WEIGHT, VGG_FLAVOUR,
                                  PerceptualLoss)
from pipeline.model.generators import build_generator
from pipeline.serve.imaging import image_exists, load_style


class StyleTransferModule(L.LightningModule):
    """Feed-forward style transfer (Ulyanov et al. 2017, Johnson et al. 2016).

    Args:
        style_image: the style image: a file, or `skimage:<name>` (an image scikit-image ships, e.g.
            skimage:hubble_deep_field or its textures skimage:brick, grass, gravel, immunohistochemistry).
        style_size: long side the style image is resized to before its Gram matrices are taken.
        arch: `residual` (Johnson) or `multiscale` (Ulyanov, with noise input).
        norm: `instance` (live per-image statistics), `batch` (paper baseline) or `none`.
        padding: `reflect` or `zero`.
        upsample: residual generator only: `nearest` (resize-conv) or `transposed`.
        width: residual generator only: base channels (32 as Johnson et al.; 16 or 8 for lighter models).
        n_residual: residual generator only: residual blocks at ¼ resolution.
        content_layer: `relu2_2` or `relu3_3`.
        style_weight, content_weight, tv_weight: loss weights (defaults: pipeline/loss/losses.py).
        vgg_flavour: `caffe` (verified Oxford weights, default) or `torchvision`.
        vgg_weights: path of the caffe-flavour weights (None: $VGG_WEIGHTS or the project cache).
        lr: Adam learning rate.
        lr_schedule: `none`, `cosine` (to 0 at max_steps) or `step` (×0.1 at 2/3 of max_steps).
        max_nonfinite: consecutive non-finite losses tolerated (steps skipped) before training stops.
    """

    def __init__(self, style_image: str, style_size: int | None = 512, arch: str = "residual",
                 norm: str = "instance", padding: str = "reflect", upsample: str = "nearest", width: int = 32,
                 n_residual: int = 5,
                 content_layer: str = CONTENT_LAYER, style_weight: float = STYLE_WEIGHT,
                 content_weight: float = CONTENT_WEIGHT, tv_weight: float = TV_WEIGHT, vgg_flavour: str = VGG_FLAVOUR,
                 vgg_weights: str | None = None, lr: float = 1e-3, lr_schedule: str = "none", max_nonfinite: int = 10):
        super().__init__()
        self.save_hyperparameters()
        if not image_exists(style_image):
            raise FileNotFoundError(f"style image {style_image} does not exist")
        if lr_schedule not in ("none", "cosine", "step"):
            raise ValueError(f"lr_schedule={lr_schedule!r}: choose none, cosine or step")
        extra = {"upsample": upsample, "width": width, "n_residual": n_residual} if arch == "residual" else {}
        self.generator = build_generator(arch, norm=norm, padding=padding, **extra)
        style = load_style(style_image, style_size)
        self.loss = PerceptualLoss(style, content_layer=content_layer, style_layers=STYLE_LAYERS,
                                   style_weight=style_weight, content_weight=content_weight, tv_weight=tv_weight,
                                   vgg_flavour=vgg_flavour, vgg_weights=vgg_weights)
        self.register_buffer("style", style, persistent=False)
        self._nonfinite = 0
        self.skipped_samples = 0  # corrupt samples the data stream skipped on this rank (checkpointed)
        self.failed_shards = 0  # shards the data stream could not read on this rank (checkpointed)
        # FLOPs of the current batch, for ThroughputMonitor's FLOP/s; per-image counts by (stage, H, W)
        self.flops_per_batch: int | None = None
        self._image_flops: dict[tuple[bool, int, int], int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)

    def image_flops(self, images: torch.Tensor, backward: bool) -> int:
        """FLOPs of one image of `images`' size through a training step (generator, loss, backward to
        the generator's weights) or a validation step (forward only), counted by torch's
        FlopCounterMode once per size on a copy of the generator (its state and the RNG untouched)."""
        key = (backward, *images.shape[-2:])
        if key not in self._image_flops:
            generator, x = copy.deepcopy(self.generator), images[:1].detach()
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices), FlopCounterMode(display=False) as counter, \
                    torch.set_grad_enabled(backward):
                total = self.loss(generator(x), x)["total"]
                if backward:
                    torch.autograd.grad(total, [p for p in generator.parameters() if p.requires_grad])
            self._image_flops[key] = counter.get_total_flops()
        return self._image_flops[key]

    def on_train_batch_start(self, batch: ContentBatch, batch_idx: int) -> None:
        self.flops_per_batch = self.image_flops(batch.images, backward=True) * len(batch.images)

    def on_validation_batch_start(self, batch: ContentBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.flops_per_batch = self.image_flops(batch.images, backward=False) * len(batch.images)

    def _terms(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.loss(self.generator(content), content)

    def training_step(self, batch: ContentBatch, batch_idx: int) -> torch.Tensor | None:
        self._count_data_losses(batch)
        terms = self._terms(batch.images)
        finite = bool(torch.isfinite(terms["total"]).item())
        # Every DDP rank must take the same decision, or the skipped rank hangs the all-reduce.
        finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self._nonfinite += 1
            self.log("train/nonfinite_steps", float(self._nonfinite))
            if self._nonfinite >= self.hparams.max_nonfinite:
                raise FloatingPointError(
                    f"loss was non-finite for {self._nonfinite} consecutive steps (last: "
                    f"{ {k: float(v) for k, v in terms.items()} }); stopping. Lower the lr or check the data.")
            return None  # Lightning skips backward and the optimizer step
        self._nonfinite = 0
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True, batch_size=len(batch.images))
        return terms["total"]

    def _count_data_losses(self, batch: ContentBatch) -> None:
        """Running totals of corrupt samples and unreadable shards skipped, summed over DDP ranks."""
        self.skipped_samples += int(batch.skipped)
        self.failed_shards += int(batch.failed_shards)
        self.log("data/failed_shards", float(self.failed_shards), reduce_fx="sum", sync_dist=True, batch_size=1)
        self.log("data/skipped_samples", float(self.skipped_samples), reduce_fx="sum", sync_dist=True,
                 batch_size=1)

    def validation_step(self, batch: ContentBatch, batch_idx: int) -> None:
        terms = self._terms(batch.images)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=len(batch.images), sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr)
        if self.hparams.lr_schedule == "none":
            return opt
        total = max(1, self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches)
        if self.hparams.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, 2 * total // 3), gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # The frozen VGG and style targets are rebuilt from the hyper-parameters; keep them out of
    # checkpoints (30 MB of weights that are not ours), and put them back before a strict load.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.startswith("loss.")]:
            del sd[k]
        checkpoint["skipped_samples"] = self.skipped_samples
        checkpoint["failed_shards"] = self.failed_shards

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_samples = int(checkpoint.get("skipped_samples", 0))
        self.failed_shards = int(checkpoint.get("failed_shards", 0))
        checkpoint["state_dict"].update({f"loss.{k}": v for k, v in self.loss.state_dict().items()})
