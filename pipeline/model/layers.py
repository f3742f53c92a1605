"""Building blocks of the generators: padding and convolution, the conv-norm-activation unit, the
residual block and the two ×2 upsampling stages, and the pad/crop that lets any H×W through.

Every unit takes `(x, w, h)`: the image batch and its conditioning (per-sample style weights and
strength features, or None), which only the norms read (pipeline.model.norms). They are ModuleLists
with explicit forwards rather than Sequentials so the conditioning can be passed along (TorchScript
compiles every submodule's `forward`), and their indices are those of the Sequentials they replaced:
state-dict keys (`down.0.0.1.weight`, `res.0.body.4.bias`, …) are the same since the first release.

Each class is the one place that knows its own indices: the rest of the project reads a unit's parts
by name (`conv`, `norm`, `unit`, `layers()`), and the inference form's regrouped decoder calls the
units' own `upsampled` / `space_to_depth` (pipeline.model.fast_ops). A change of layout is made here.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.model.fast_ops import space_to_depth_conv, upsample_conv
from pipeline.model.norms import Norm, channels_last_instance_norm, check_choice, make_norm

Padding = Literal["reflect", "zero"]
PADDINGS = ("reflect", "zero")
__all__ = ["ConvLayer", "ConvNormAct", "NearestUp", "Padding", "PhotoSkip", "ResidualBlock", "TransposedUp", "check_choice",
           "crop_to", "depth_to_space", "pad_to_multiple", "space_to_depth"]


class ConvLayer(nn.Sequential):
    """Padding + convolution: [0] ReflectionPad2d, [1] Conv2d, or [0] a zero-padding Conv2d. Reflection
    padding is applied explicitly so that a constant input stays constant at the border (no dark
    frame, paper Fig. 3)."""

    __jit_unused_properties__ = ["conv"]  # Python's name for a part; TorchScript cannot return modules

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: Padding = "reflect"):
        check_choice("padding", padding, PADDINGS)
        pad = kernel // 2
        if padding == "reflect":
            super().__init__(nn.ReflectionPad2d(pad), nn.Conv2d(cin, cout, kernel, stride))
        else:
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding=pad))

    @property
    def conv(self) -> nn.Conv2d:
        """The convolution (its padding, by kernel // 2, is reflection or the conv's own zeros)."""
        return self[-1]

    def upsampled(self, x: torch.Tensor) -> torch.Tensor:
        """= self(nearest ×2 upsampling of x) for reflection padding and a 3×3 conv, without the
        upsampled tensor: one 2×2 conv at low resolution (pipeline.model.fast_ops.upsample_conv)."""
        return upsample_conv(x, self[1].weight, self[1].bias)

    def space_to_depth(self, x: torch.Tensor) -> torch.Tensor:
        """= self(x) for reflection padding and even-sized x, the conv in space-to-depth form
        (pipeline.model.fast_ops.space_to_depth_conv): the inference form's 9×9 output layer."""
        return space_to_depth_conv(self[0](x), self[1].weight, self[1].bias)


class ConvNormAct(nn.ModuleList):
    """[0] padding + conv (`ConvLayer`) → [1] norm → [2] ReLU (or LeakyReLU): the unit both generators are
    made of; `conv` and `norm` name its parts."""

    __jit_unused_properties__ = ["conv", "norm"]

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, norm: Norm = "instance",
                 padding: Padding = "reflect", act: str = "relu", n_styles: int = 1, strength: bool = False):
        activation = nn.ReLU(inplace=True) if act == "relu" else nn.LeakyReLU(0.01, inplace=True)
        super().__init__([ConvLayer(cin, cout, kernel, stride, padding), make_norm(norm, cout, n_styles, strength),
                          activation])

    @property
    def conv(self) -> nn.Conv2d:
        return self[0].conv

    @property
    def norm(self) -> nn.Module:
        return self[1]

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None,  # type: ignore[override]
                h: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self[2](self[1](self[0](x), w, h))

    def upsampled(self, x: torch.Tensor, w: Optional[torch.Tensor] = None,
                  h: Optional[torch.Tensor] = None) -> torch.Tensor:
        """= self(nearest ×2 upsampling of x, w, h), regrouped (`ConvLayer.upsampled`)."""
        return self[2](self[1](self[0].upsampled(x), w, h))


class ResidualBlock(nn.Module):
    """Two 3×3 conv-norm layers with an identity shortcut (Johnson et al.): `body` [0] ConvLayer, [1] norm,
    [2] ReLU, [3] ConvLayer, [4] norm."""

    def __init__(self, channels: int, *, norm: Norm = "instance", padding: Padding = "reflect", n_styles: int = 1,
                 strength: bool = False):
        super().__init__()
        self.body = nn.ModuleList([
            ConvLayer(channels, channels, 3, 1, padding), make_norm(norm, channels, n_styles, strength),
            nn.ReLU(inplace=True),
            ConvLayer(channels, channels, 3, 1, padding), make_norm(norm, channels, n_styles, strength),
        ])

    def layers(self) -> tuple[tuple[nn.Conv2d, nn.Module, bool], tuple[nn.Conv2d, nn.Module, bool]]:
        """(conv, norm, ReLU after the norm?) of its two conv-norm layers, in order."""
        return (self.body[0].conv, self.body[1], True), (self.body[3].conv, self.body[4], False)

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None, h: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.body[2](self.body[1](self.body[0](x), w, h))
        return x + self.body[4](self.body[3](y), w, h)


class NearestUp(nn.ModuleList):
    """[0] nearest ×2 upsampling → [1] `ConvNormAct` 3×3 (resize-convolution: no checkerboard artifacts);
    `unit` names the latter."""

    __jit_unused_properties__ = ["unit"]

    def __init__(self, cin: int, cout: int, *, norm: Norm = "instance", padding: Padding = "reflect", n_styles: int = 1,
                 strength: bool = False):
        super().__init__([nn.Upsample(scale_factor=2, mode="nearest"),
                          ConvNormAct(cin, cout, 3, 1, norm=norm, padding=padding, n_styles=n_styles, strength=strength)])

    @property
    def unit(self) -> ConvNormAct:
        return self[1]

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None,  # type: ignore[override]
                h: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self[1](self[0](x), w, h)

    def regrouped(self, x: torch.Tensor, w: Optional[torch.Tensor] = None,
                  h: Optional[torch.Tensor] = None) -> torch.Tensor:
        """= self(x, w, h) for reflection padding, the inference form's decoder stage: the upsampling and the
        3×3 conv as one 2×2 conv at low resolution, its four output phases interleaved (fast_ops)."""
        return self[1].upsampled(x, w, h)


class TransposedUp(nn.ModuleList):
    """[0] ConvTranspose ×2 → [1] norm → [2] ReLU (the `upsample="transposed"` stage)."""

    def __init__(self, cin: int, cout: int, *, norm: Norm = "instance", n_styles: int = 1, strength: bool = False):
        super().__init__([nn.ConvTranspose2d(cin, cout, 3, 2, padding=1, output_padding=1),
                          make_norm(norm, cout, n_styles, strength), nn.ReLU(inplace=True)])

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None,  # type: ignore[override]
                h: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self[2](self[1](self[0](x), w, h))


class PhotoSkip(nn.Module):
    """The compact layout's shortcut from the photo to the exit: the space-to-depth photo normalized per
    channel (instance norm without parameters, so the output stays independent of the photo's contrast)
    through a 1×1 conv, added to the exit's values before depth-to-space. It hands the exit the
    photo's detail inside each block, which the narrow body cannot carry. `conv` starts at zero: training
    starts from the network without it."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.conv = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        if photo.is_contiguous():
            normed = F.instance_norm(photo, None, None, None, None, True, 0.0, self.eps)
        else:  # channels-last (the inference form)
            normed = channels_last_instance_norm(photo, self.eps, None, None)
        return self.conv(normed)


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


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) → (B, factor²·C, H/factor, W/factor), channel (factor·u + v)·C + c holding pixel
    (factor·i + u, factor·j + v) of channel c; H and W multiples of `factor` (the generator pads to
    them). One reshape-transpose: in ONNX Runtime Web 16 strided slices and a concat cost more."""
    b, c, h, w = x.shape
    y = x.reshape(b, c, h // factor, factor, w // factor, factor).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(b, factor * factor * c, h // factor, w // factor)


def depth_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, factor²·C, H, W) → (B, C, factor·H, factor·W): `pixel_shuffle` (channel c·factor² + factor·u + v
    becomes pixel (factor·i + u, factor·j + v) of channel c)."""
    return F.pixel_shuffle(x, factor)
