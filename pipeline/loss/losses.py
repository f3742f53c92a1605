"""Perceptual loss: Gram-matrix style statistics, feature content loss, total variation.

Gram matrices are always computed in fp32 with autocast off: in fp16 the sums over H×W
of products of post-ReLU activations overflow (65504) on real images.
"""
from __future__ import annotations

from pathlib import Path

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
    total = torch.zeros((), device=next(iter(grams.values())).device)
    for name, g in grams.items():
        w = 1.0 if layer_weights is None else layer_weights.get(name, 1.0)
        total = total + w * (g - targets[name].to(g.dtype)).pow(2).mean()
    return total


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of VGG features (fp32)."""
    return (features.float() - target.float()).pow(2).mean()


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of vertical plus horizontal neighbours."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).float().pow(2).mean()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).float().pow(2).mean()
    return dh + dw


class PerceptualLoss(nn.Module):
    """Style + content + TV loss against one fixed style image.

    The style targets (Gram matrices of the style image) are computed once, at construction
    or by `set_style`, and kept as non-persistent buffers (they follow `.to(device)`).
    """

    def __init__(self, style_image: torch.Tensor, *, content_layer: str = CONTENT_LAYER,
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
        self.set_style(style_image)

    @torch.no_grad()
    def set_style(self, style_image: torch.Tensor) -> None:
        """Compute and store the target Gram matrices of a (1, 3, H, W) style image in [0, 1]."""
        if style_image.dim() != 4 or style_image.shape[:2] != (1, 3):
            raise ValueError(f"style image must have shape (1, 3, H, W), got {tuple(style_image.shape)}")
        device = next(self.vgg.parameters()).device
        feats = self.vgg(style_image.to(device))
        for name in self.style_layers:
            self.register_buffer(f"target_{name}", gram(feats[name]), persistent=False)

    def targets(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"target_{name}") for name in self.style_layers}

    def forward(self, output: torch.Tensor, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the weighted terms and their sum: {'style', 'content', 'tv', 'total'}."""
        out_feats = self.vgg(output)
        with torch.no_grad():  # the content target needs the VGG only up to the content layer
            content_target = self.vgg(content, [self.content_layer])[self.content_layer]
        grams = {name: gram(out_feats[name]) for name in self.style_layers}
        terms = {
            "style": self.weights["style"] * style_loss(grams, self.targets(), self.style_layer_weights),
            "content": self.weights["content"] * content_loss(out_feats[self.content_layer], content_target),
            "tv": self.weights["tv"] * tv_loss(output),
        }
        terms["total"] = terms["style"] + terms["content"] + terms["tv"]
        return terms
