"""Building blocks shared by both generators: norm and padding choices, conv blocks.

`norm="instance"` is the paper's change: statistics per image and per channel over
H×W, at train *and* test time. `track_running_stats=False` guarantees no running
statistics exist anywhere, so eval mode cannot silently switch to stored ones.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn
import torch.nn.functional as F

Norm = Literal["instance", "batch", "none"]
Padding = Literal["reflect", "zero"]
NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "zero")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a clear ValueError when a config string is not one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(allowed)}")


class InstanceNorm2d(nn.InstanceNorm2d):
    """`nn.InstanceNorm2d(affine=True, track_running_stats=False)`: the same module, parameters,
    state dict and statistics (per image and channel over H×W, live in train and eval alike),
    with a fast path for channels-last input.

    The CPU kernel of `instance_norm` makes its input NCHW-contiguous, so in a channels-last
    network every norm would cost two full copies of the activation and hand the next convolution
    a layout oneDNN has to reorder again. For channels-last input the same formula is computed
    with layout-preserving ops: the mean (a vectorised cascade sum), then the variance of the
    centred values (two-pass: as accurate as instance_norm), then one scale-and-shift, in place
    when no gradient is needed. (`group_norm`, `batch_norm` and `var_mean` also keep the layout,
    but the first two accumulate E[x²] − E[x]² in fp32, 1e-3..1e-2 off on 1080p activations,
    and `var_mean`'s Welford loop is 4× slower here.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous():  # NCHW: the native kernel
            return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        weight = self.weight.view(1, -1, 1, 1) if self.weight is not None else None
        bias = self.bias.view(1, -1, 1, 1) if self.bias is not None else None
        return channels_last_instance_norm(x, self.eps, weight, bias)


def channels_last_instance_norm(x: torch.Tensor, eps: float, weight: Optional[torch.Tensor],
                                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Instance norm of channels-last `x` with layout-preserving ops (see `InstanceNorm2d`); `weight` and
    `bias` broadcast against (B, C, 1, 1) (per channel, or per sample and channel)."""
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    scale = torch.rsqrt((centred * centred).mean(dim=(2, 3), keepdim=True) + eps)
    if weight is not None:
        scale = scale * weight
    if torch.is_grad_enabled():
        y = centred * scale
        return y + bias if bias is not None else y
    centred.mul_(scale)  # inference: reuse the buffer instead of allocating the output
    return centred.add_(bias) if bias is not None else centred


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """Instance norm (live statistics, learnable affine), batch norm (paper's baseline) or none."""
    check_choice("norm", norm, NORMS)
    if norm == "instance":
        return InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class ConvLayer(nn.Sequential):
    """Padding + convolution. Reflection padding is applied explicitly so that a
    constant input stays constant at the border (no dark frame, paper Fig. 3)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: Padding = "reflect"):
        check_choice("padding", padding, PADDINGS)
        pad = kernel // 2
        if padding == "reflect":
            super().__init__(nn.ReflectionPad2d(pad), nn.Conv2d(cin, cout, kernel, stride))
        else:
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding=pad))


class ConvNormAct(nn.Sequential):
    """Conv → norm → ReLU (or LeakyReLU), the unit both generators are made of."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, norm: Norm = "instance",
                 padding: Padding = "reflect", act: str = "relu"):
        activation = nn.ReLU(inplace=True) if act == "relu" else nn.LeakyReLU(0.01, inplace=True)
        super().__init__(ConvLayer(cin, cout, kernel, stride, padding), make_norm(norm, cout), activation)


class ResidualBlock(nn.Module):
    """Two 3×3 conv-norm layers with an identity shortcut (Johnson et al.)."""

    def __init__(self, channels: int, *, norm: Norm = "instance", padding: Padding = "reflect"):
        super().__init__()
        self.body = nn.Sequential(
            ConvLayer(channels, channels, 3, 1, padding), make_norm(norm, channels), nn.ReLU(inplace=True),
            ConvLayer(channels, channels, 3, 1, padding), make_norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int) -> tuple[torch.Tensor, int, int]:
    """Pad bottom/right (edge replicate) so H and W are multiples of `multiple` and at least `min_size`.

    Replicate padding works for any size ≥ 1 (reflection needs pad < size) and is an
    affine map of x, so it keeps the generator's contrast invariance exact.
    Returns the padded tensor and the original H, W for `crop_to`.

    Always pads (possibly by 0) rather than branching on the size: a Python `if` on the
    shape would make torch.export specialize the graph to one side of the branch.
    """
    h, w = x.shape[-2], x.shape[-1]
    th, tw = _padded_size(h, multiple, min_size), _padded_size(w, multiple, min_size)
    return F.pad(x, (0, tw - w, 0, th - h), mode="replicate"), h, w


def _padded_size(n: int, multiple: int, min_size: int) -> int:
    """Smallest multiple of `multiple` that is ≥ n and ≥ min_size."""
    # Written as (number of blocks) × multiple so torch.export's symbolic sizes stay visibly
    # divisible (later stride-2 / pooling / ×2 upsampling sizes then simplify and match).
    blocks, min_blocks = (n + multiple - 1) // multiple, (min_size + multiple - 1) // multiple
    if torch.jit.is_scripting():
        return max(blocks, min_blocks) * multiple
    # torch.sym_max keeps the size symbolic (builtin max() would guard on it); on ints it is max().
    return torch.sym_max(blocks, min_blocks) * multiple


def crop_to(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop bottom/right back to h×w (undoes `pad_to_multiple`).

    Written as a negative constant pad rather than `y[..., :h, :w]`: torch.export cannot
    prove h ≤ padded H for symbolic sizes and rejects the slice, while the pad's output
    size is h×w by construction. Same values as the slice.
    """
    return F.pad(y, (0, w - y.shape[-1], 0, h - y.shape[-2]))
