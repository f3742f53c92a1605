"""LightningModule: one generator trained for one style image, or for N (conditional instance norm),
optionally with a strength control, with the perceptual loss."""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from pipeline.data.stream_stages import ContentBatch
from pipeline.loss.losses import (CONTENT_LAYER, CONTENT_WEIGHT, PHOTO_WEIGHT, STYLE_LAYERS, STYLE_WEIGHT, TV_WEIGHT,
                                  VGG_FLAVOUR, PerceptualLoss, photo_loss)
from pipeline.model.generators import CONDITIONED_ARCHS, build_generator
from pipeline.common.image_sources import load_style
from pipeline.train.adapt import LEARN, check_new_styles, fingerprint, grafted_state, kept_drift, load_base, \
    parameter_groups, replay_loss
from pipeline.train.conditions import ConditionSampling
from pipeline.train.distill import DISTILL_WEIGHT, check_student, distill_terms, load_teacher, teacher_output
from pipeline.train.generator_config import check_generator_matches, resolve_architecture
from pipeline.train.nonfinite import NonFiniteGuard
from pipeline.train.regularizers import stability_loss
from pipeline.train.seeds import seed_this_rank
from pipeline.train.step_flops import image_flops
from pipeline.train.styles import style_name, style_specs

STYLE_SAMPLING = ("sample", "batch")


class StyleTransferModule(ConditionSampling, L.LightningModule):
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
        init_from: add the styles to this trained model (FROM: a packaged model's name, a run folder, a
            .ckpt or a .safetensors; pipeline/train/adapt.py): its generator with one more (γ, β) row per
            new style. The generator options below are then FROM's (leave them out; a given one must agree).
        learn: with `init_from`, what trains: `new_styles` (only the new styles' rows; FROM's styles stay
            bit-identical) or `all` (every weight; FROM's shared ones at `shared_lr`).
        keep_styles: with `init_from`, keep FROM's styles in the new model (default) or only the new ones.
        replay_weight: with `init_from`, learn=all and kept styles: each batch adds its photos in FROM's
            styles, pulled toward FROM's own output with this weight (mean squared error in 0..1).
        shared_lr: with `init_from` and learn=all, Adam's rate for FROM's shared weights (default: lr).
        distill_from: train a student of this model (TEACHER: a packaged model's name, a run folder, a
            .ckpt or a .safetensors; `make distill`, pipeline/train/distill.py) on its outputs, for its
            styles and strength control; `style_image` is then left out.
        distill_weight: with `distill_from`, the weight of the mean squared difference from the teacher's pixels.
        arch: `residual` (Johnson), `compact` (the same laid out for cost: docs/compact.md)
            or `multiscale` (Ulyanov, with noise input). Default residual.
        norm: `instance` (live per-image statistics), `batch` (paper baseline) or `none`. Default instance.
        padding: `reflect` (default) or `zero`.
        upsample: residual generator only: `nearest` (resize-conv, default) or `transposed`.
        width: residual and compact generators: base channels (32 as Johnson et al., the default; 16 or 8 for lighter models).
        n_residual: residual and compact generators: residual blocks at ¼ (compact: ⅛) resolution (default 5).
        content_layer: `relu2_2` or `relu3_3`.
        style_weight, content_weight, tv_weight: loss weights (defaults: pipeline/loss/losses.py).
        vgg_flavour: `caffe` (verified Oxford weights, default) or `torchvision`.
        vgg_weights: path of the caffe-flavour weights (None: $VGG_WEIGHTS or the project cache).
        lr: Adam learning rate.
        lr_schedule: `none`, `cosine` (to 0 at max_steps) or `step` (×0.1 at 2/3 of max_steps).
        max_nonfinite: consecutive non-finite losses tolerated (steps skipped) before training stops
            (checked at the log interval).
    """

    def __init__(self, style_image: str | None = None, style_size: int | None = 512, arch: str | None = None,
                 norm: str | None = None, padding: str | None = None, upsample: str | None = None,
                 width: int | None = None, n_residual: int | None = None,
                 content_layer: str = CONTENT_LAYER, style_weight: float = STYLE_WEIGHT,
                 content_weight: float = CONTENT_WEIGHT, tv_weight: float = TV_WEIGHT, vgg_flavour: str = VGG_FLAVOUR,
                 vgg_weights: str | None = None, lr: float = 1e-3, lr_schedule: str = "none", max_nonfinite: int = 10,
                 style_sampling: str = "sample", strength_control: bool | None = None, stability_weight: float = 0.0,
                 photo_weight: float = PHOTO_WEIGHT, strength_samples: int = 1, init_from: str | None = None,
                 learn: str = "all", keep_styles: bool = True, replay_weight: float = 0.0, shared_lr: float | None = None,
                 distill_from: str | None = None, distill_weight: float = DISTILL_WEIGHT):
        super().__init__()
        teacher = load_teacher(distill_from) if distill_from else None
        if teacher is not None:
            strength_control = check_student(teacher, style_image, strength_control, init_from)
        elif not style_image:
            raise ValueError("--model.style_image is required: the painting(s) to train (or --model.distill_from)")
        specs = style_specs(style_image) if style_image else []
        if learn not in LEARN or replay_weight < 0:
            raise ValueError(f"learn={learn!r} (choose {' or '.join(LEARN)}), replay_weight={replay_weight} (≥ 0)")
        base = load_base(init_from) if init_from else None
        given = {"arch": arch, "norm": norm, "padding": padding, "upsample": upsample, "width": width,
                 "n_residual": n_residual, "strength_control": strength_control}
        shape = resolve_architecture(base, given)
        arch, norm = shape["arch"], shape["norm"]
        kept = base.styles if base is not None and keep_styles else []
        if len(kept) + len(specs) > 1 and (arch not in CONDITIONED_ARCHS or norm != "instance"):
            raise ValueError(f"{len(specs)} styles in one generator need conditional instance norm: train them with "
                             f"--model.arch=residual --model.norm=instance (got arch={arch}, norm={norm}), or train "
                             f"one model per style")
        self.save_hyperparameters()
        # what was built, also when LightningCLI hands save_hyperparameters its own copy of the config
        self.hparams.update(shape)
        strength_control = shape["strength_control"]
        if lr_schedule not in ("none", "cosine", "step"):
            raise ValueError(f"lr_schedule={lr_schedule!r}: choose none, cosine or step")
        if stability_weight < 0 or photo_weight < 0 or strength_samples < 0:
            raise ValueError(f"stability_weight, photo_weight and strength_samples must be ≥ 0, got {stability_weight}, "
                             f"{photo_weight}, {strength_samples}")
        if style_sampling not in STYLE_SAMPLING:
            raise ValueError(f"style_sampling={style_sampling!r}: choose {' or '.join(STYLE_SAMPLING)}")
        new_names = [style_name(s) for s in specs] if teacher is None else teacher.styles
        # the style images (1, 3, h, w) each, for the loss targets and the TensorBoard header: the new ones
        self.style_images = [load_style(s, style_size) for s in specs]
        prints = check_new_styles(base, new_names, self.style_images) if base else \
            teacher.fingerprints if teacher else [fingerprint(i) for i in self.style_images]
        self.style_names = kept + new_names  # the generator's order: FROM's kept styles, then the new ones
        self.style_fingerprints = (base.fingerprints if kept else []) + prints
        self.first_new = len(kept)  # generator index of the first style the loss knows
        extra = {k: shape[k] for k in ("upsample", "width", "n_residual")} if arch in CONDITIONED_ARCHS else {}
        self.generator = build_generator(arch, norm=norm, padding=shape["padding"], n_styles=len(self.style_names),
                                         strength=strength_control, **extra)
        # FROM's generator, frozen: the new one's starting point, the replay targets and the drift measure
        self.teacher = None if teacher is None else teacher.generator  # a distillation's teacher, frozen
        if base is not None:
            self.generator.load_state_dict(grafted_state(base, len(specs), keep_styles))
            self.teacher = build_generator(arch, norm=norm, padding=shape["padding"], n_styles=base.n_styles,
                                           strength=strength_control, **extra)
            self.teacher.load_state_dict(base.state)
            self.teacher.eval().requires_grad_(False)
        self.loss = PerceptualLoss(self.style_images or None, content_layer=content_layer, style_layers=STYLE_LAYERS,
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

    def image_flops(self, images: torch.Tensor, backward: bool) -> int:
        """FLOPs of one image of `images`' size through a training or validation step (step_flops.py)."""
        return image_flops(self.generator, self.loss, images, backward, self.n_styles, self.hparams.stability_weight,
                           self._image_flops, self.teacher if self.hparams.get("distill_from") else None)

    def on_train_batch_start(self, batch: ContentBatch, batch_idx: int) -> None:
        n = len(batch.images) + self.strength_sample_count(len(batch.images))  # the generator runs both
        self.flops_per_batch = self.image_flops(batch.images, backward=True) * n

    def on_validation_batch_start(self, batch: ContentBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.flops_per_batch = self.image_flops(batch.images, backward=False) * len(batch.images)

    def _terms(self, content: torch.Tensor, styles: torch.Tensor | None = None,
               strength: torch.Tensor | None = None, stability: bool = False) -> dict[str, torch.Tensor]:
        output = self(content, styles, strength)
        if self.hparams.get("distill_from"):  # the teacher's output on the same photo, style and strength
            target = teacher_output(self.teacher, content, styles, self.n_styles, strength)
            return distill_terms(self.loss, output, target, content, self.hparams.distill_weight)
        terms = self.loss(output, content, None if styles is None else styles - self.first_new, strength)
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
        if self.replays:
            strength = self.draw_conditions(len(batch.images))[1]
            terms["replay"] = self.hparams.replay_weight * replay_loss(self.generator, self.teacher, batch.images,
                                                                       self.first_new, strength)
            terms["total"] = terms["total"] + terms["replay"]
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
            for k, name in enumerate(self.style_names[self.first_new:], start=self.first_new):
                styles = torch.full((n,), k, dtype=torch.long, device=self.device)
                per_style.append(self._terms(batch.images, styles))
                self.log_dict({f"val/{name}/{t}": v for t, v in per_style[-1].items()}, batch_size=n, sync_dist=True)
            terms = {t: torch.stack([p[t] for p in per_style]).mean() for t in per_style[0]}
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=n, sync_dist=True)
        if self.first_new:  # FROM's styles in the new model: the largest change of any pixel, in levels of 255
            self.log("val/kept_styles_max_levels", kept_drift(self.generator, self.teacher, batch.images), batch_size=n, reduce_fx="max",
                     sync_dist=True)

    @property
    def replays(self) -> bool:
        return bool(self.first_new and self.hparams.replay_weight > 0 and self.hparams.learn == "all")

    def configure_optimizers(self) -> Any:
        groups = parameter_groups(self.generator, self.hparams.learn, self.first_new, self.hparams.lr,
                                  self.hparams.shared_lr)
        opt = self.nonfinite.optimizer(groups, self.hparams.lr)
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
        for k in [k for k in sd if k.startswith(("loss.", "teacher."))]:
            del sd[k]
        checkpoint["skipped_samples"] = self.skipped_samples
        checkpoint["failed_shards"] = self.failed_shards
        checkpoint["styles"] = list(self.style_names)  # what X-Style names, in the generator's order
        checkpoint["style_fingerprints"] = list(self.style_fingerprints)  # what tells a painting added twice

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_generator_matches(checkpoint["state_dict"], self.generator)
        self.skipped_samples = int(checkpoint.get("skipped_samples", 0))
        self.failed_shards = int(checkpoint.get("failed_shards", 0))
        checkpoint["state_dict"].update({f"loss.{k}": v for k, v in self.loss.state_dict().items()})
        if self.teacher is not None:
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
