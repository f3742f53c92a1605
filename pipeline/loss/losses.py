"""Perceptual loss: Gram-matrix style statistics, feature content loss, total variation, and
`build_loss`, a trained model's own loss (what evaluation, the Gatys baseline and the ablation measure).

Gram matrices are always computed in fp32 with autocast off: in fp16 the sums over H×W
of products of post-ReLU activations overflow (65504) on real images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.loss.vgg import VGGFeatures

# The training loss's defaults, defined here only: the LightningModule's signature, the Gatys
# baseline, the benchmarks and the presets (which do not restate them) all take these.
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
CONTENT_LAYER = "relu2_2"
# With the caffe-flavour VGG's 0..255 feature scale; on 128 px crops a 15x heavier style weight
# wiped the content out for the whole short `cpu` budget.
STYLE_WEIGHT = 2e-5
CONTENT_WEIGHT = 1e-5
TV_WEIGHT = 1.0
# The strength control's photo term: (1 − s)·PHOTO_WEIGHT·mean((output − photo)²) per sample, so lower
# strengths are pulled toward the photo and the term vanishes at full strength (docs/styles.md).
PHOTO_WEIGHT = 20.0
VGG_FLAVOUR = "caffe"
LOSS_DEFAULTS = {"content_layer": CONTENT_LAYER, "style_layers": STYLE_LAYERS, "style_weight": STYLE_WEIGHT,
                 "content_weight": CONTENT_WEIGHT, "tv_weight": TV_WEIGHT, "vgg_flavour": VGG_FLAVOUR}


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix per image: G[b] = F F^T / (C·H·W) for F of shape (C, H·W), in fp32."""
    b, c, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = features.float()
        if f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous():
            f = f.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view of channels-last data, no copy
            return torch.bmm(f.transpose(1, 2), f) / (c * h * w)
        f = f.reshape(b, c, h * w)
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def style_loss(grams: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               layer_weights: dict[str, float] | None = None) -> torch.Tensor:
    """Σ_layers w_l · mean((G_l − T_l)²); each target (1, C, C) is broadcast over the batch."""
    return per_sample_style_loss(grams, targets, layer_weights).mean()


def per_sample_style_loss(grams: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                          layer_weights: dict[str, float] | None = None) -> torch.Tensor:
    """(B,): Σ_layers w_l · mean over C×C of (G_l[b] − T_l[b])²; a target is (1, C, C) (one style for
    every sample) or (B, C, C) (each sample's own style)."""
    total = torch.zeros(next(iter(grams.values())).shape[0], device=next(iter(grams.values())).device)
    for name, g in grams.items():
        w = 1.0 if layer_weights is None else layer_weights.get(name, 1.0)
        total = total + w * (g - targets[name].to(g.dtype)).pow(2).mean(dim=(1, 2))
    return total


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of VGG features (fp32)."""
    return (features.float() - target.float()).pow(2).mean()


def photo_loss(output: torch.Tensor, photo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """mean over the batch of scale[b] · mean((output[b] − photo[b])²), in fp32: the strength control's
    pull toward the photo, `scale` = 1 − strength (B,)."""
    per_sample = (output.float() - photo.float()).pow(2).mean(dim=(1, 2, 3))
    return (scale.float() * per_sample).mean()


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of vertical plus horizontal neighbours."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).float().pow(2).mean()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).float().pow(2).mean()
    return dh + dw


class PerceptualLoss(nn.Module):
    """Style + content + TV loss against one fixed style image, or against one of N style images
    chosen per sample.

    The style targets (Gram matrices of every style image, stacked (N, C, C) per layer) are
    computed once, at construction or by `set_style`, and kept as non-persistent buffers (they
    follow `.to(device)`).
    """

    def __init__(self, style_image: torch.Tensor | list[torch.Tensor] | None, *, content_layer: str = CONTENT_LAYER,
                 style_layers: tuple[str, ...] = STYLE_LAYERS, style_weight: float = STYLE_WEIGHT,
                 content_weight: float = CONTENT_WEIGHT, tv_weight: float = TV_WEIGHT,
                 style_layer_weights: dict[str, float] | None = None, vgg_flavour: str = VGG_FLAVOUR,
                 vgg_weights: str | Path | None = None):
        super().__init__()
        if content_layer not in ("relu2_2", "relu3_3"):
            raise ValueError(f"content_layer={content_layer!r}: choose relu2_2 or relu3_3")
        self.content_layer, self.style_layers = content_layer, tuple(style_layers)
        self.weights = {"style": style_weight, "content": content_weight, "tv": tv_weight}
        self.style_layer_weights = style_layer_weights
        self.vgg = VGGFeatures(sorted(set(self.style_layers) | {content_layer}, key=lambda n: n[4:]),
                               flavour=vgg_flavour, weights_path=vgg_weights)
        if style_image is not None:  # None: targets given per call (`style_targets`: distillation)
            self.set_style(style_image)

    @torch.no_grad()
    def set_style(self, style_image: torch.Tensor | list[torch.Tensor]) -> None:
        """Compute and store the target Gram matrices of (1, 3, H, W) style images in [0, 1] (one, or
        a list of N of any sizes): buffers `target_<layer>` of shape (N, C, C)."""
        images = list(style_image) if isinstance(style_image, (list, tuple)) else [style_image]
        if not images:
            raise ValueError("at least one style image is needed")
        for img in images:
            if img.dim() != 4 or img.shape[:2] != (1, 3):
                raise ValueError(f"style image must have shape (1, 3, H, W), got {tuple(img.shape)}")
        device = next(self.vgg.parameters()).device
        feats = [self.vgg(img.to(device)) for img in images]  # one pass each: the images' sizes differ
        for name in self.style_layers:
            self.register_buffer(f"target_{name}", torch.cat([gram(f[name]) for f in feats]), persistent=False)

    @property
    def n_styles(self) -> int:
        found = getattr(self, f"target_{self.style_layers[0]}", None)
        return 0 if found is None else found.shape[0]

    def grams(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image Gram matrices (B, C, C) of `images` at the style layers: targets for `forward`'s
        `style_targets` (a distillation's teacher outputs)."""
        feats = self.vgg(images, list(self.style_layers))
        return {name: gram(feats[name]) for name in self.style_layers}

    def targets(self, styles: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Target Grams per layer: (N, C, C), or (B, C, C) for the per-sample style indices `styles`."""
        found = {name: getattr(self, f"target_{name}") for name in self.style_layers}
        return found if styles is None else {name: t[styles] for name, t in found.items()}

    def forward(self, output: torch.Tensor, content: torch.Tensor, styles: torch.Tensor | None = None,
                style_scale: torch.Tensor | None = None,
                style_targets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Return the weighted terms and their sum: {'style', 'content', 'tv', 'total'}.

        `styles` (B,) long: each sample's style index (default: style 0, the only one of a
        single-style loss); `style_scale` (B,): a per-sample factor on the style term (the strength
        a sample was generated at; default 1); `style_targets`: per-sample Grams (`grams`) to match
        instead of the style images'."""
        out_feats = self.vgg(output)
        with torch.no_grad():  # the content target needs the VGG only up to the content layer
            content_target = self.vgg(content, [self.content_layer])[self.content_layer]
        grams = {name: gram(out_feats[name]) for name in self.style_layers}
        if style_targets is not None:
            targets = style_targets
        elif styles is None and self.n_styles > 1:
            raise ValueError(f"this loss has {self.n_styles} styles: pass each sample's style index")
        else:
            targets = self.targets(styles) if styles is not None else self.targets()
        per_sample = per_sample_style_loss(grams, targets, self.style_layer_weights)
        if style_scale is not None:
            per_sample = per_sample * style_scale.to(per_sample.dtype)
        terms = {
            "style": self.weights["style"] * per_sample.mean(),
            "content": self.weights["content"] * content_loss(out_feats[self.content_layer], content_target),
            "tv": self.weights["tv"] * tv_loss(output),
        }
        terms["total"] = terms["style"] + terms["content"] + terms["tv"]
        return terms


def build_loss(style: torch.Tensor | list[torch.Tensor], hparams: dict[str, Any] | None = None) -> PerceptualLoss:
    """PerceptualLoss (eval mode) with a model's loss hyper-parameters (its checkpoint's or export's
    `hyper_parameters`; other keys ignored, `vgg_weights` honoured), else the training defaults
    (LOSS_DEFAULTS): what is measured or optimized is exactly what the models learn."""
    hp = {**LOSS_DEFAULTS, **{k: v for k, v in (hparams or {}).items() if k in LOSS_DEFAULTS}}
    return PerceptualLoss(style, **hp, vgg_weights=(hparams or {}).get("vgg_weights")).eval()
