"""LightningModule: one generator trained for one style image, or for N (conditional instance norm),
optionally with a strength control, with the perceptual loss."""
from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.utilities import rank_zero_warn
import torch.nn.functional as F

from pipeline.data.stream_stages import ContentBatch
from pipeline.loss.losses import (CONTENT_LAYER, CONTENT_WEIGHT, PHOTO_WEIGHT, STYLE_LAYERS, STYLE_WEIGHT, TV_WEIGHT,
                                  VGG_FLAVOUR, PerceptualLoss, photo_loss)
from pipeline.model.generators import build_generator
from pipeline.common.image_sources import load_style
from pipeline.train.nonfinite import NonFiniteGuard
from pipeline.train.regularizers import stability_loss
from pipeline.train.seeds import seed_this_rank
from pipeline.train.styles import style_name, style_specs

STYLE_SAMPLING = ("sample", "batch")
# With strength_samples=0 (the first scheme): the share of a batch's samples drawn at strength 1, the
# rest uniform in [0, 1]. The default (strength_samples ≥ 1) keeps the whole batch at strength 1 and
# adds samples at lower strengths, so full strength sees what a model without the control sees.
FULL_STRENGTH_SHARE = 0.75


def _strength_control_for(requested: bool, arch: str, norm: str) -> bool:
    """The strength control as this generator can have it: it conditions the residual generator's
    instance norms, so it is turned off, with a warning, for batch norm, no norm or the multi-scale
    generator (the paper's baselines, which the presets' default must not block)."""
    if requested and (arch != "residual" or norm != "instance"):
        rank_zero_warn(f"strength control turned off: it conditions instance norm in the residual generator, and this "
                       f"run trains arch={arch}, norm={norm} (pass --model.strength_control=false to silence this)")
        return False
    return requested


class StyleTransferModule(L.LightningModule):
    """Feed-forward style transfer (Ulyanov et al. 2017, Johnson et al. 2016), N styles in one generator
    (Dumoulin et al. 2017) and a strength control (after Babaeizadeh & Ghiasi 2020).

    Args:
        style_image: the style image: a file, or `skimage:<name>` (an image scikit-image ships, e.g.
            skimage:hubble_deep_field or its textures skimage:brick, grass, gravel, immunohistochemistry);
            or several, comma-separated, or a folder of images: one generator for all of them, each
            style called by its file stem.
        style_sampling: with several styles, draw a style per `sample` (default) or one per `batch`.
        strength_control: also train a strength input s ∈ [0, 1]: 0 gives the photo back, 1 the full
            style, evenly between (docs/styles.md). Per
            sample the style loss is weighted by s and a photo term by 1 − s (`photo_weight`); the
            generator conditions its instance norms on s and mixes its output toward the photo
            (pipeline/model/generators.py). With `norm` batch/none or the multi-scale generator it is
            turned off (a warning says so), so the presets' default never blocks the paper's baselines.
        strength_samples: with the strength control, samples added to every batch at a uniform strength
            (copies of its first photos, with their styles), while the batch itself trains full strength
            as a model without the control would; 0: no extra samples, 3/4 of the batch at full
            strength and the rest uniform (the first scheme, measured in docs/styles.md).
        photo_weight: weight of the strength control's photo term, (1 − s)·photo_weight·MSE(output,
            photo) per sample (pipeline/loss/losses.py's PHOTO_WEIGHT); it vanishes at full strength.
        stability_weight: weight of the temporal-stability term (pipeline/train/regularizers.py): the
            output's change under input noise and under small warps, for video with less flicker.
            0 (default): off, no extra cost; on, each step runs the generator three times.
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
        max_nonfinite: consecutive non-finite losses tolerated (steps skipped) before training stops
            (checked at the log interval).
    """

    def __init__(self, style_image: str, style_size: int | None = 512, arch: str = "residual",
                 norm: str = "instance", padding: str = "reflect", upsample: str = "nearest", width: int = 32,
                 n_residual: int = 5,
                 content_layer: str = CONTENT_LAYER, style_weight: float = STYLE_WEIGHT,
                 content_weight: float = CONTENT_WEIGHT, tv_weight: float = TV_WEIGHT, vgg_flavour: str = VGG_FLAVOUR,
                 vgg_weights: str | None = None, lr: float = 1e-3, lr_schedule: str = "none", max_nonfinite: int = 10,
                 style_sampling: str = "sample", strength_control: bool = False, stability_weight: float = 0.0,
                 photo_weight: float = PHOTO_WEIGHT, strength_samples: int = 1):
        super().__init__()
        specs = style_specs(style_image)
        strength_control = _strength_control_for(strength_control, arch, norm)
        if len(specs) > 1 and (arch != "residual" or norm != "instance"):
            raise ValueError(f"{len(specs)} styles in one generator need conditional instance norm: train them with "
                             f"--model.arch=residual --model.norm=instance (got arch={arch}, norm={norm}), or train "
                             f"one model per style")
        self.save_hyperparameters()
        # what was built, also when LightningCLI hands save_hyperparameters its own copy of the config
        self.hparams["strength_control"] = strength_control
        if lr_schedule not in ("none", "cosine", "step"):
            raise ValueError(f"lr_schedule={lr_schedule!r}: choose none, cosine or step")
        if stability_weight < 0 or photo_weight < 0 or strength_samples < 0:
            raise ValueError(f"stability_weight, photo_weight and strength_samples must be ≥ 0, got {stability_weight}, "
                             f"{photo_weight}, {strength_samples}")
        if style_sampling not in STYLE_SAMPLING:
            raise ValueError(f"style_sampling={style_sampling!r}: choose {' or '.join(STYLE_SAMPLING)}")
        self.style_names = [style_name(s) for s in specs]
        extra = {"upsample": upsample, "width": width, "n_residual": n_residual} if arch == "residual" else {}
        self.generator = build_generator(arch, norm=norm, padding=padding, n_styles=len(specs), strength=strength_control,
                                         **extra)
        # the style images (1, 3, h, w) each, for the loss targets and the TensorBoard header
        self.style_images = [load_style(s, style_size) for s in specs]
        self.loss = PerceptualLoss(self.style_images, content_layer=content_layer, style_layers=STYLE_LAYERS,
                                   style_weight=style_weight, content_weight=content_weight, tv_weight=tv_weight,
                                   vgg_flavour=vgg_flavour, vgg_weights=vgg_weights)
        self.nonfinite = NonFiniteGuard(max_nonfinite)
        self.skipped_samples = 0  # corrupt samples the data stream skipped on this rank (checkpointed)
        self.failed_shards = 0  # shards the data stream could not read on this rank (checkpointed)
        # FLOPs of the current batch, for ThroughputMonitor's FLOP/s; per-image counts by (stage, H, W)
        self.flops_per_batch: int | None = None
        self._image_flops: dict[tuple[bool, int, int], int] = {}

    @property
    def n_styles(self) -> int:
        return len(self.style_names)

    @property
    def conditioned(self) -> bool:
        return self.n_styles > 1 or self.hparams.strength_control

    def forward(self, x: torch.Tensor, styles: torch.Tensor | None = None, strength: torch.Tensor | None = None) -> torch.Tensor:
        """Stylize `x` with per-sample style indices `styles` (B,) (default: the first style) and
        strengths (B,) (default: 1; only with the strength control)."""
        if not self.conditioned:
            return self.generator(x)
        weights = None if styles is None else F.one_hot(styles, self.n_styles).to(x.dtype)
        return self.generator(x, weights, strength if self.hparams.strength_control else None)

    def draw_conditions(self, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-sample style indices (or None with one style) and strengths (or None without the control)."""
        styles = strength = None
        if self.n_styles > 1:
            shape = (batch,) if self.hparams.style_sampling == "sample" else (1,)
            styles = torch.randint(self.n_styles, shape, device=self.device).expand(batch)
        if self.hparams.strength_control and self.hparams.get("strength_samples", 0) > 0:  # whole batch at 1
            strength = torch.ones(batch, device=self.device)
        elif self.hparams.strength_control:
            uniform = torch.rand(batch, device=self.device)
            full = torch.rand(batch, device=self.device) < FULL_STRENGTH_SHARE
            strength = torch.where(full, torch.ones_like(uniform), uniform)
        return styles, strength

    def strength_sample_count(self, batch: int) -> int:
        """How many strength samples a training batch of `batch` photos gets (at most one per photo)."""
        return min(self.hparams.get("strength_samples", 0), batch) if self.hparams.strength_control else 0

    def with_strength_samples(self, images: torch.Tensor, styles: torch.Tensor | None, strength: torch.Tensor | None
                              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The training batch with `strength_samples` copies of its first photos (their styles) appended
        at strengths uniform in [0, 1); unchanged without the control or with strength_samples=0."""
        k = self.strength_sample_count(len(images)) if strength is not None else 0
        if k == 0:
            return images, styles, strength
        extra = torch.rand(k, device=images.device, dtype=strength.dtype)
        return (torch.cat([images, images[:k]]), None if styles is None else torch.cat([styles, styles[:k]]),
                torch.cat([strength, extra]))

    def image_flops(self, images: torch.Tensor, backward: bool) -> int:
        """FLOPs of one image of `images`' size through a training step (generator, loss, backward) or a
        validation step (forward only), counted by Lightning's `measure_flops` once per size on a copy
        of the generator (its state and the RNG untouched)."""
        key = (backward, *images.shape[-2:])
        if key not in self._image_flops:
            generator, x = copy.deepcopy(self.generator), images[:1].detach()
            devices = [x.device] if x.device.type == "cuda" else []
            styles = torch.zeros(1, dtype=torch.long, device=x.device) if self.n_styles > 1 else None

            def step() -> torch.Tensor:
                output = generator(x)
                total = self.loss(output, x, styles)["total"]
                if backward and self.hparams.stability_weight > 0:  # two more generator passes per step
                    total = total + stability_loss(generator, x, output)
                return total

            with torch.random.fork_rng(devices), torch.set_grad_enabled(backward):
                self._image_flops[key] = measure_flops(generator, step, (lambda total: total) if backward else None)
        return self._image_flops[key]

    def on_train_batch_start(self, batch: ContentBatch, batch_idx: int) -> None:
        n = len(batch.images) + self.strength_sample_count(len(batch.images))  # the generator runs both
        self.flops_per_batch = self.image_flops(batch.images, backward=True) * n

    def on_validation_batch_start(self, batch: ContentBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.flops_per_batch = self.image_flops(batch.images, backward=False) * len(batch.images)

    def _terms(self, content: torch.Tensor, styles: torch.Tensor | None = None,
               strength: torch.Tensor | None = None, stability: bool = False) -> dict[str, torch.Tensor]:
        output = self(content, styles, strength)
        terms = self.loss(output, content, styles, strength)
        if strength is not None and self.hparams.photo_weight > 0:  # lower strengths pulled toward the photo
            terms["photo"] = self.hparams.photo_weight * photo_loss(output, content, 1.0 - strength)
            terms["total"] = terms["total"] + terms["photo"]
        if stability:  # training only: validation totals stay comparable between runs
            terms["stability"] = self.hparams.stability_weight * stability_loss(
                lambda x: self(x, styles, strength), content, output)
            terms["total"] = terms["total"] + terms["stability"]
        return terms

    def on_fit_start(self) -> None:
        seed_this_rank(self.global_rank)  # after the weights were drawn: they stay equal on every rank

    def training_step(self, batch: ContentBatch, batch_idx: int) -> torch.Tensor:
        """The step's loss; no host–device sync here: a non-finite one is skipped on the device
        (`on_before_optimizer_step`, pipeline/train/nonfinite.py) and counted at the log interval."""
        self.skipped_samples += int(batch.skipped)  # host ints the data stream counted
        self.failed_shards += int(batch.failed_shards)
        images, styles, strength = self.with_strength_samples(batch.images, *self.draw_conditions(len(batch.images)))
        terms = self._terms(images, styles, strength, stability=self.hparams.stability_weight > 0)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True, batch_size=len(batch.images))
        return terms["total"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.nonfinite.before_step(optimizer)

    def on_train_batch_end(self, outputs: Any, batch: ContentBatch, batch_idx: int) -> None:
        """At the log interval only (every rank at the same steps): the non-finite check, and the
        data-loss counters summed over ranks — the step's only syncs."""
        if self.trainer.global_step % self.trainer.log_every_n_steps:
            return
        self.log("train/nonfinite_steps", self.nonfinite.check(), batch_size=1)
        self.log("data/failed_shards", float(self.failed_shards), reduce_fx="sum", sync_dist=True, batch_size=1)
        self.log("data/skipped_samples", float(self.skipped_samples), reduce_fx="sum", sync_dist=True,
                 batch_size=1)

    def validation_step(self, batch: ContentBatch, batch_idx: int) -> None:
        """Every style at full strength; with several styles `val/<name>/<term>` per style and
        `val/<term>` their mean (what checkpoints monitor)."""
        n = len(batch.images)
        if self.n_styles == 1:
            terms = self._terms(batch.images)
        else:
            per_style = []
            for k, name in enumerate(self.style_names):
                styles = torch.full((n,), k, dtype=torch.long, device=self.device)
                per_style.append(self._terms(batch.images, styles))
                self.log_dict({f"val/{name}/{t}": v for t, v in per_style[-1].items()}, batch_size=n, sync_dist=True)
            terms = {t: torch.stack([p[t] for p in per_style]).mean() for t in per_style[0]}
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = self.nonfinite.optimizer(self.generator.parameters(), self.hparams.lr)
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
        checkpoint["styles"] = list(self.style_names)  # what X-Style names, in the generator's order

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_generator_matches(checkpoint)
        self.skipped_samples = int(checkpoint.get("skipped_samples", 0))
        self.failed_shards = int(checkpoint.get("failed_shards", 0))
        checkpoint["state_dict"].update({f"loss.{k}": v for k, v in self.loss.state_dict().items()})

    def _check_generator_matches(self, checkpoint: dict[str, Any]) -> None:
        """A clear error when a resumed checkpoint's generator is not the one this run builds (e.g. a run
        from before the strength control, resumed with the presets that now turn it on)."""
        saved = {k[len("generator."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("generator.")}
        ours = self.generator.state_dict()
        if saved.keys() == ours.keys() and all(saved[k].shape == v.shape for k, v in ours.items()):
            return
        has_strength = any(k.startswith("strength_net.") for k in saved)
        first_norm = saved.get("down.0.1.weight")
        n_styles = int(first_norm.shape[0]) if first_norm is not None and first_norm.dim() == 2 else 1
        raise ValueError(
            f"the checkpoint's generator ({n_styles} style(s), strength control {'on' if has_strength else 'off'}) is not "
            f"the one this run builds ({self.n_styles} style(s), strength control "
            f"{'on' if self.hparams.strength_control else 'off'}): resume with the checkpoint's own settings, e.g. "
            f"--model.strength_control={'true' if has_strength else 'false'} and the same styles and width")
