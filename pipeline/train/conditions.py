"""What each training sample is stylized with: a style and a strength per sample, and the extra
samples at lower strengths (the strength control's training scheme, measured in docs/styles.md)."""
from __future__ import annotations

import torch

# With strength_samples=0 (the first scheme): the share of a batch's samples drawn at strength 1, the
# rest uniform in [0, 1]. The default (strength_samples ≥ 1) keeps the whole batch at strength 1 and
# adds samples at lower strengths, so full strength sees what a model without the control sees.
FULL_STRENGTH_SHARE = 0.75


class ConditionSampling:
    """The LightningModule's conditioning draws (a mixin: it reads `hparams`, `n_styles`, `first_new`,
    and `device` of pipeline.train.module.StyleTransferModule)."""

    def draw_conditions(self, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-sample style indices (or None with one style) and strengths (or None without the control)."""
        styles = strength = None
        if self.n_styles > 1:  # the styles the loss knows: with FROM, the new ones
            shape = (batch,) if self.hparams.style_sampling == "sample" else (1,)
            styles = self.first_new + torch.randint(self.n_styles - self.first_new, shape, device=self.device).expand(batch)
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
