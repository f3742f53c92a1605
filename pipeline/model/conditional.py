"""Conditional instance norm: one generator for N styles and a strength control.

- Styles (Dumoulin, Shlens & Kudlur, ICLR 2017): every instance-norm layer keeps a (γ, β) row per
  style, everything else is shared. A style-weight vector w (one-hot = one style, convex = a mix)
  selects γ = wᵀΓ, β = wᵀB: mixing interpolates the normalization parameters.
- Strength (after Babaeizadeh & Ghiasi, ICLR 2020, who condition the norm parameters on the loss
  weights): during training the style-loss weight is scaled by s ∈ [0, 1] per sample and the
  generator sees s. A small network maps (w, s) to a hidden vector h (`StrengthNet`), and every norm
  layer adds hᵀG_γ, hᵀG_β (G initialised to zero, so training starts as the plain model).

Statistics stay per image and channel over H×W, live at train and test time, as in
`layers.InstanceNorm2d`; the conditioning only changes the affine part, per sample, so one batch may
mix styles and strengths.

The same arithmetic, on a state dict, is `pipeline.serve.tiling.resolve_conditioning` (tiled
inference of huge images); tests/test_conditional.py checks that they agree.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.model.layers import ConvLayer, Padding, channels_last_instance_norm

STRENGTH_HIDDEN = 32  # width of h: the strength path's capacity per layer is a 32 → C linear map


class StrengthNet(nn.Module):
    """(w, s) → h = ReLU(Linear(N + 1 → STRENGTH_HIDDEN)([w, s])). Its keys: `strength_net.linear.*`."""

    def __init__(self, n_styles: int):
        super().__init__()
        self.linear = nn.Linear(n_styles + 1, STRENGTH_HIDDEN)

    def forward(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(torch.cat([w, s[:, None]], dim=1)))


class CondInstanceNorm2d(nn.Module):
    """Instance norm whose affine (γ, β) depends on per-sample style weights and strength features.

    Parameters: `weight`, `bias` (N, C), one row per style (initialised to γ = 1, β = 0, as
    nn.InstanceNorm2d); with strength, `strength_gamma`, `strength_beta` (STRENGTH_HIDDEN, C), zero.
    forward(x (B, C, H, W), w (B, N) convex weights, h (B, STRENGTH_HIDDEN) or (B, 0)).
    """

    __constants__ = ["has_strength", "eps"]

    def __init__(self, channels: int, n_styles: int, strength: bool, eps: float = 1e-5):
        super().__init__()
        self.eps, self.has_strength = eps, strength
        self.weight = nn.Parameter(torch.ones(n_styles, channels))
        self.bias = nn.Parameter(torch.zeros(n_styles, channels))
        if strength:
            self.strength_gamma = nn.Parameter(torch.zeros(STRENGTH_HIDDEN, channels))
            self.strength_beta = nn.Parameter(torch.zeros(STRENGTH_HIDDEN, channels))

    def affine(self, w: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ, β), each (B, C), for style weights w and strength features h."""
        gamma, beta = w @ self.weight, w @ self.bias
        if self.has_strength:
            gamma = gamma + h @ self.strength_gamma
            beta = beta + h @ self.strength_beta
        return gamma, beta

    def forward(self, x: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(w.to(x.dtype), h.to(x.dtype))
        gamma, beta = gamma[:, :, None, None], beta[:, :, None, None]
        if x.is_contiguous():  # NCHW: the native kernel for the statistics
            return F.instance_norm(x, None, None, None, None, True, 0.0, self.eps) * gamma + beta
        return channels_last_instance_norm(x, self.eps, gamma, beta)  # channels-last inference


class CondConvNormAct(nn.ModuleList):
    """Padding + conv → conditional norm → ReLU: `ConvNormAct` with the same indices (0 conv layer,
    1 norm, 2 activation), so state-dict keys read the same as the plain generator's. (The conditional
    containers are ModuleLists: TorchScript compiles every submodule's `forward`, and a Sequential's
    cannot pass the conditioning along.)"""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: Padding, n_styles: int, strength: bool):
        super().__init__([ConvLayer(cin, cout, kernel, stride, padding), CondInstanceNorm2d(cout, n_styles, strength),
                          nn.ReLU(inplace=True)])

    def forward(self, x: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self[2](self[1](self[0](x), w, h))


class CondTransposedUp(nn.ModuleList):
    """ConvTranspose ×2 → conditional norm → ReLU (the `upsample="transposed"` stage)."""

    def __init__(self, cin: int, cout: int, n_styles: int, strength: bool):
        super().__init__([nn.ConvTranspose2d(cin, cout, 3, 2, padding=1, output_padding=1),
                          CondInstanceNorm2d(cout, n_styles, strength), nn.ReLU(inplace=True)])

    def forward(self, x: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self[2](self[1](self[0](x), w, h))


class CondNearestUp(nn.ModuleList):
    """Nearest ×2 upsampling → `CondConvNormAct` (resize-convolution; indices as the plain stage)."""

    def __init__(self, cin: int, cout: int, padding: Padding, n_styles: int, strength: bool):
        super().__init__([nn.Upsample(scale_factor=2, mode="nearest"),
                          CondConvNormAct(cin, cout, 3, 1, padding, n_styles, strength)])

    def forward(self, x: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self[1](self[0](x), w, h)


class CondResidualBlock(nn.Module):
    """`ResidualBlock` with conditional norms; `body` keeps the plain block's indices."""

    def __init__(self, channels: int, padding: Padding, n_styles: int, strength: bool):
        super().__init__()
        self.body = nn.ModuleList([
            ConvLayer(channels, channels, 3, 1, padding), CondInstanceNorm2d(channels, n_styles, strength),
            nn.ReLU(inplace=True),
            ConvLayer(channels, channels, 3, 1, padding), CondInstanceNorm2d(channels, n_styles, strength),
        ])

    def forward(self, x: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        y = self.body[2](self.body[1](self.body[0](x), w, h))
        return x + self.body[4](self.body[3](y), w, h)


def style_weights(style: torch.Tensor | None, batch: int, n_styles: int, like: torch.Tensor) -> torch.Tensor:
    """(B, N) convex weights: None → the first style; else `style` (B, N), ≥ 0, normalized per row."""
    if style is None:
        return F.one_hot(torch.zeros(batch, dtype=torch.long, device=like.device), n_styles).to(like.dtype)
    w = style.to(device=like.device, dtype=like.dtype)
    return w / w.sum(dim=1, keepdim=True)


def strength_values(strength: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
    """(B,) strengths: None → 1 (full style, what a model without the control does)."""
    if strength is None:
        return torch.ones(batch, device=like.device, dtype=like.dtype)
    return strength.to(device=like.device, dtype=like.dtype).reshape(-1)
