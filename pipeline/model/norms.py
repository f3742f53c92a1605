"""The generators' normalization layers, one call signature for all: `norm(x, w, h)`.

`InstanceNorm2d` is the paper's change: statistics per image and channel over H×W, live at train
*and* test time (no running statistics exist anywhere). It is also the conditional instance norm
of several styles and of the strength control, of which one style without strength is the special case:

- Styles (Dumoulin, Shlens & Kudlur, ICLR 2017): the layer keeps a (γ, β) row per style, everything
  else in the generator is shared. A style-weight vector w (one-hot = one style, convex = a mix)
  selects γ = wᵀΓ, β = wᵀB: mixing interpolates the normalization parameters.
- Strength (after Babaeizadeh & Ghiasi, ICLR 2020, who condition the norm parameters on the loss
  weights): during training the style-loss weight is scaled by s ∈ [0, 1] per sample and the
  generator sees s. A small network maps (w, s) to a hidden vector h (`StrengthNet`), and every norm
  layer adds hᵀG_γ, hᵀG_β (G initialised to zero, so training starts as the plain model).
- One style, no strength: γ, β are (C,) vectors, the parameters and state-dict keys of
  `nn.InstanceNorm2d(affine=True)`, so checkpoints written before the conditioning load as they were.

`BatchNorm2d` (the paper's baseline) and `NoNorm` take (x, w, h) too and ignore the conditioning.
Tiled inference (pipeline.serve.tiling) runs `InstanceNorm2d` with whole-image statistics it gathered
itself: `with_statistics` is the layer's affine map for given statistics.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn
import torch.nn.functional as F

Norm = Literal["instance", "batch", "none"]
NORMS = ("instance", "batch", "none")
STRENGTH_HIDDEN = 32  # width of h: the strength path's capacity per layer is a 32 → C linear map


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a clear ValueError when a config string is not one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(allowed)}")


class InstanceNorm2d(nn.Module):
    """Instance norm with learnable affine (γ, β), optionally conditioned on per-sample style weights and
    strength features.

    Parameters: `weight`, `bias`: (C,) for one style without strength (nn.InstanceNorm2d's), else
    (N, C), one row per style (initialised to γ = 1, β = 0); with strength, `strength_gamma`,
    `strength_beta` (STRENGTH_HIDDEN, C), zero. forward(x (B, C, H, W), w (B, N) convex weights or
    None, h (B, STRENGTH_HIDDEN) or None).

    Channels-last input (the generators' inference form) is normalized with layout-preserving ops:
    the CPU kernel of `instance_norm` makes its input NCHW-contiguous, so in a channels-last network
    every norm would cost two full copies of the activation and hand the next convolution a layout
    oneDNN has to reorder again (see `channels_last_instance_norm`).
    """

    __constants__ = ["conditioned", "has_strength", "eps"]

    def __init__(self, channels: int, n_styles: int = 1, strength: bool = False, eps: float = 1e-5):
        super().__init__()
        self.eps, self.has_strength, self.conditioned = eps, strength, n_styles > 1 or strength
        shape = (n_styles, channels) if self.conditioned else (channels,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        if strength:
            self.strength_gamma = nn.Parameter(torch.zeros(STRENGTH_HIDDEN, channels))
            self.strength_beta = nn.Parameter(torch.zeros(STRENGTH_HIDDEN, channels))

    def affine(self, w: Optional[torch.Tensor], h: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ, β), each (B, C) for a conditioned layer (style weights w, strength features h), (1, C) otherwise."""
        if not self.conditioned:
            return self.weight[None], self.bias[None]
        assert w is not None, "a conditioned norm needs style weights"
        gamma, beta = w @ self.weight, w @ self.bias
        if self.has_strength:
            assert h is not None, "a norm with the strength control needs strength features"
            gamma = gamma + h @ self.strength_gamma
            beta = beta + h @ self.strength_beta
        return gamma, beta

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None, h: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.conditioned:
            if x.is_contiguous():  # NCHW: the native kernel
                return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            return channels_last_instance_norm(x, self.eps, self.weight.view(1, -1, 1, 1), self.bias.view(1, -1, 1, 1))
        assert w is not None, "a conditioned norm needs style weights"
        gamma, beta = self.affine(w.to(x.dtype), None if h is None else h.to(x.dtype))
        gamma, beta = gamma[:, :, None, None], beta[:, :, None, None]
        if x.is_contiguous():  # NCHW: the native kernel for the statistics
            return F.instance_norm(x, None, None, None, None, True, 0.0, self.eps) * gamma + beta
        return channels_last_instance_norm(x, self.eps, gamma, beta)

    def with_statistics(self, mean: torch.Tensor, var: torch.Tensor, w: Optional[torch.Tensor] = None,
                        h: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's map for one image of known per-channel `mean` and `var` (C,), as
        y = x·scale + shift with scale, shift (1, C, 1, 1) in the weights' dtype (computed in float64);
        w (1, N), h (1, STRENGTH_HIDDEN) as in forward."""
        gamma, beta = self.affine(w, h)
        scale = gamma[0].double() / torch.sqrt(var.double() + self.eps)
        shift = beta[0].double() - mean.double() * scale
        dtype = self.weight.dtype
        return scale.to(dtype).view(1, -1, 1, 1), shift.to(dtype).view(1, -1, 1, 1)


def channels_last_instance_norm(x: torch.Tensor, eps: float, weight: Optional[torch.Tensor],
                                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Instance norm of channels-last `x` with layout-preserving ops; `weight` and `bias` broadcast
    against (B, C, 1, 1) (per channel, or per sample and channel).

    The mean (a vectorised cascade sum), then the variance of the centred values (two-pass: as
    accurate as instance_norm), then one scale-and-shift, in place when autograd records nothing.
    (`group_norm`, `batch_norm` and `var_mean` also keep the layout, but the first two accumulate
    E[x²] − E[x]² in fp32, 1e-3..1e-2 off on 1080p activations, and `var_mean`'s Welford loop is 4×
    slower here.)"""
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    scale = torch.rsqrt((centred * centred).mean(dim=(2, 3), keepdim=True) + eps)
    if weight is not None:
        scale = scale * weight
    if centred.requires_grad or scale.requires_grad:
        y = centred * scale
        return y + bias if bias is not None else y
    centred.mul_(scale)  # nothing to differentiate: reuse the buffer instead of allocating the output
    return centred.add_(bias) if bias is not None else centred


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (the paper's baseline; running statistics at test time) with the norms' signature:
    the same parameters, buffers and arithmetic (its forward restated: TorchScript has no super())."""

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None,  # type: ignore[override]
                h: Optional[torch.Tensor] = None) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            tracked = self.num_batches_tracked
            if tracked is not None:
                tracked.add_(1)
                factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if keep else None, self.running_var if keep else None, self.weight,
                            self.bias, use_batch_stats, factor, self.eps)


class NoNorm(nn.Module):
    """No normalization, with the norms' signature."""

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None, h: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x


def make_norm(norm: Norm, channels: int, n_styles: int = 1, strength: bool = False) -> nn.Module:
    """Instance norm (live statistics, learnable affine, conditioned for several styles or a strength
    control), batch norm (the paper's baseline) or none."""
    check_choice("norm", norm, NORMS)
    if norm == "instance":
        return InstanceNorm2d(channels, n_styles, strength)
    if n_styles > 1 or strength:
        raise ValueError(f"several styles or a strength control need norm='instance' (conditional instance norm), "
                         f"got norm={norm!r}")
    return BatchNorm2d(channels) if norm == "batch" else NoNorm()


class StrengthNet(nn.Module):
    """(w, s) → h = ReLU(Linear(N + 1 → STRENGTH_HIDDEN)([w, s])). Its keys: `strength_net.linear.*`."""

    def __init__(self, n_styles: int):
        super().__init__()
        self.linear = nn.Linear(n_styles + 1, STRENGTH_HIDDEN)

    def forward(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(torch.cat([w, s[:, None]], dim=1)))


def style_weights(style: Optional[torch.Tensor], batch: int, n_styles: int, like: torch.Tensor) -> torch.Tensor:
    """(B, N) convex weights: None → the first style; else `style` (B, N), ≥ 0, normalized per row."""
    if style is None:
        return F.one_hot(torch.zeros(batch, dtype=torch.long, device=like.device), n_styles).to(like.dtype)
    w = style.to(device=like.device, dtype=like.dtype)
    return w / w.sum(dim=1, keepdim=True)


def strength_values(strength: Optional[torch.Tensor], batch: int, like: torch.Tensor) -> torch.Tensor:
    """(B,) strengths: None → 1 (full style, what a model without the control does)."""
    if strength is None:
        return torch.ones(batch, device=like.device, dtype=like.dtype)
    return strength.to(device=like.device, dtype=like.dtype).reshape(-1)
