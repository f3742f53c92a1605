"""The feed-forward generators, float RGB in [0, 1] in and out, any H×W, by `arch`:

- `residual`: Johnson et al.'s network (the paper's preferred one), `ResidualGenerator`.
- `compact`: the same network laid out for cost (`ResidualGenerator(layout="compact")`): a
  space-to-depth entry, its body at ⅛ resolution, a depth-to-space exit (docs/compact.md).
- `multiscale`: Ulyanov et al.'s texture-network pyramid, which also takes noise z (pipeline/model/multiscale.py).

Each pads the input to the size its strides need and crops the output back, so
output H×W always equals input H×W.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.model.layers import (ConvLayer, ConvNormAct, NearestUp, Padding, PhotoSkip, ResidualBlock, TransposedUp, check_choice,
                                   crop_to, depth_to_space, pad_to_multiple, space_to_depth)
from pipeline.model.multiscale import MultiScaleGenerator
from pipeline.model.norms import InstanceNorm2d, Norm, StrengthNet, make_norm, strength_values, style_weights

Upsample = Literal["nearest", "transposed"]
STRENGTH_VERSION = 2  # 1: the strength only conditions the norms; 2: it also mixes toward the photo (ResidualGenerator)
PHOTO_EPS = 1e-3  # the photo is clamped to [ε, 1 − ε] before its logit: strength 0 gives it back to 1e-3
Output = Literal["sigmoid", "clamp"]
OUTPUTS = ("sigmoid", "clamp")
Layout = Literal["classic", "compact"]
ARCHS = ("residual", "compact", "multiscale")
CONDITIONED_ARCHS = ("residual", "compact")  # conditional instance norm: several styles, the strength control
SHUFFLE = 4  # the compact layout's space-to-depth factor: its entry and exit at ¼, its body at ⅛ resolution
BODY_WIDTH = 3  # the compact layout's body channels per unit of `width` (the classic one has 4 at ¼ resolution)


class ResidualGenerator(nn.Module):
    """9×9 conv 32 → stride-2 convs 64, 128 → residual blocks of 128 → two ×2 upsampling stages 64, 32
    → 9×9 conv to RGB, then a sigmoid so the output is an image in [0, 1] (channel counts for
    `width` 32; they scale with it).

    `output="clamp"` ends with a clamp to [0, 1] instead of the sigmoid: the form of models trained
    elsewhere with a linear output (pipeline.model.pytorch_examples), whose 0..255 scale is folded into
    the first and last convolutions.

    `n_styles` > 1 or `strength=True` condition every instance norm (pipeline.model.norms):
    `forward(x, style, strength)` takes per-sample style weights (B, N) and strengths (B,); None means
    the first style at full strength. One style without strength is the special case of the same
    network: its state dict and `forward(x)` are those of the plain generator since the first release.

    The strength s also mixes the output toward the photo before the sigmoid (`strength_version` 2):
    sigmoid(s·y + (1 − s)·logit(x)). At s = 0 the output is the photo (to 1e-3), at s = 1 the network
    is exactly the one without the control, and between them y(x, s) is trained (with the style loss
    scaled by s and a photo term scaled by 1 − s, pipeline/train/module.py) to make the way even, so
    strokes fade rather than the picture being cross-faded. Version 1 (checkpoints from before it,
    whose weights lack the `strength_version` buffer) only conditions the norms: its strength 0 stays
    stylized (docs/styles.md).

    Its stages by name: `down` (three `ConvNormAct`), `res` (the `ResidualBlock`s), `up` (two `NearestUp`
    or `TransposedUp`), `out` (the `ConvLayer` to RGB); each names its own parts (`conv`, `norm`, `unit`,
    `layers()`: pipeline.model.layers), which is all that tiled inference (pipeline.serve.tiling) reads of the layout.

    `layout="compact"` (arch `compact`) is the same network laid out for cost: the image enters by
    space-to-depth (each 4×4 block of pixels as 48 channels, `shuffle` = 4), `down` is a 3×3 conv to
    `width` channels at ¼ resolution and a stride-2 one to 3·width at ⅛, the residual blocks run at ⅛,
    `up` is one nearest ×2 stage back to ¼, and `out` a 3×3 conv to 48 channels, to which `skip` (a 1×1
    conv of the instance-normalized space-to-depth photo: `PhotoSkip`) adds the photo's detail, and
    depth-to-space turns them into the RGB image. No layer runs at full resolution; every norm is an
    instance norm (contrast invariance: the entry is linear, the padding affine).

    Two forms of one function. The module as built is the training form (NCHW, the decoder as
    declared). `for_inference()` switches it, explicitly, to the serving form that export and the
    serving loader use: channels-last activations and, for nearest upsampling with reflection
    padding, the regrouped decoder of pipeline.model.fast_ops (`decode`). Both give the same output up
    to float rounding (tests/test_generators.py; every export is checked against the training form).
    """

    # TorchScript: the branches not taken are not compiled
    __constants__ = ["fast_decoder", "clamp_output", "conditioned", "has_strength", "n_styles", "inference",
                     "photo_mix", "photo_eps", "shuffle", "multiple"]

    def __init__(self, norm: Norm = "instance", padding: Padding = "reflect", upsample: Upsample = "nearest",
                 n_residual: int = 5, width: int = 32, output: Output = "sigmoid", n_styles: int = 1,
                 strength: bool = False, strength_version: int = STRENGTH_VERSION, layout: Layout = "classic"):
        super().__init__()
        check_choice("upsample", upsample, ("nearest", "transposed"))
        check_choice("layout", layout, ("classic", "compact"))
        if layout == "compact" and (upsample != "nearest" or output != "sigmoid"):
            raise ValueError("the compact layout has nearest upsampling and the sigmoid output")
        check_choice("output", output, OUTPUTS)
        if width < 1 or n_residual < 0 or n_styles < 1:
            raise ValueError(f"width and n_styles must be ≥ 1 and n_residual ≥ 0, got width={width}, "
                             f"n_residual={n_residual}, n_styles={n_styles}")
        self.conditioned, self.has_strength, self.n_styles = n_styles > 1 or strength, strength, n_styles
        self.width = width
        # the width whose classic estimate bounds this layout's activation memory (pipeline.serve.tiling reads it):
        # compact keeps only 3 values per pixel at full resolution (measured 85 bytes/px at 1536×1024, width 16 and 32)
        self.memory_width = width if layout == "classic" else max(1, width // 8)
        self.clamp_output = output == "clamp"
        if strength and strength_version not in (1, STRENGTH_VERSION):
            raise ValueError(f"strength_version={strength_version}: choose 1 or {STRENGTH_VERSION}")
        if strength and output != "sigmoid":
            raise ValueError("the strength control needs the sigmoid output")
        # strength mixes the output toward the photo (version 2); a buffer, so the weights say which version
        self.photo_mix = strength and strength_version >= 2
        self.photo_eps = PHOTO_EPS  # an attribute: TorchScript reads no float globals
        if self.photo_mix:
            self.register_buffer("strength_version", torch.tensor(strength_version))
        self.inference = False
        self.shuffle = SHUFFLE if layout == "compact" else 1  # space-to-depth factor of the entry and exit
        opts = {"norm": norm, "n_styles": n_styles, "strength": strength}
        up = (lambda i, o: NearestUp(i, o, padding=padding, **opts)) if upsample == "nearest" else \
            (lambda i, o: TransposedUp(i, o, **opts))
        k = 3 * SHUFFLE * SHUFFLE  # the compact entry's and exit's channels: RGB of a 4×4 block
        if layout == "compact":
            w1, w2 = width, width * BODY_WIDTH
            self.down = nn.ModuleList([ConvNormAct(k, w1, 3, 1, padding=padding, **opts),
                                       ConvNormAct(w1, w2, 3, 2, padding=padding, **opts)])
            self.res = nn.ModuleList([ResidualBlock(w2, padding=padding, **opts) for _ in range(n_residual)])
            self.up = nn.ModuleList([up(w2, w1)])
        else:
            w1, w2, w3 = width, width * 2, width * 4
            self.down = nn.ModuleList([ConvNormAct(3, w1, 9, 1, padding=padding, **opts),
                                       ConvNormAct(w1, w2, 3, 2, padding=padding, **opts),
                                       ConvNormAct(w2, w3, 3, 2, padding=padding, **opts)])
            self.res = nn.ModuleList([ResidualBlock(w3, padding=padding, **opts) for _ in range(n_residual)])
            self.up = nn.ModuleList([up(w3, w2), up(w2, w1)])
        if strength:
            self.strength_net = StrengthNet(n_styles)
        # built in this order since the first release: a seed gives the same initial weights
        if layout == "compact":
            self.out = ConvLayer(width, k, 3, 1, padding)
            self.skip: nn.Module = PhotoSkip(k)
        else:
            self.out = ConvLayer(width, 3, 9, 1, padding)
            self.skip = nn.Identity()  # unused: named in both layouts for TorchScript
        # the body's scale: the padded input is a multiple of it, and ≥ 4 body pixels for the 3×3 reflections
        self.multiple = self.shuffle * 2 ** (len(self.down) - 1)
        # The regrouped decoder (`NearestUp.regrouped`, `ConvLayer.space_to_depth`) exists only for these choices.
        self.fast_decoder = padding == "reflect" and upsample == "nearest"
        # Tiled inference (pipeline.serve.tiling) implements instance norm, reflection padding and nearest upsampling.
        self.tileable = self.fast_decoder and norm == "instance"

    def for_inference(self) -> "ResidualGenerator":
        """The serving form, in place (returns self): eval mode, no gradients, channels-last activations
        and the regrouped decoder. Export and `pipeline.serve.model_io.load_model` apply it; training,
        validation and the TensorBoard grids run the module as built."""
        self.eval().requires_grad_(False)
        self.inference = True
        return self

    def conditioning(self, x: torch.Tensor, style: Optional[torch.Tensor] = None,
                     strength: Optional[torch.Tensor] = None) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(style weights (B, N), strength features (B, STRENGTH_HIDDEN)) that every norm reads, for a
        batch like `x`; None for what the generator does not have (a plain generator: (None, None))."""
        if not self.conditioned:
            if style is not None or strength is not None:
                raise ValueError("this generator has one style and no strength control: call it with the image only")
            return None, None
        b = x.shape[0]
        wts = style_weights(style, b, self.n_styles, x)
        hid: Optional[torch.Tensor] = None
        if self.has_strength:
            hid = self.strength_net(wts, strength_values(strength, b, x))
        elif strength is not None:
            raise ValueError("this generator was trained without the strength control: call it without strength")
        return wts, hid

    def forward(self, x: torch.Tensor, style: Optional[torch.Tensor] = None,
                strength: Optional[torch.Tensor] = None) -> torch.Tensor:
        # min_size 4 body pixels: after the strides the 3×3 reflection pad still has ≥ 4 px to reflect.
        xp, h, w = pad_to_multiple(x, self.multiple, 4 * self.multiple)
        if self.inference:
            # Channels-last (NHWC): oneDNN's convolutions then work without reordering every activation
            # to and from their blocked layout, and pad, norm (norms.channels_last_instance_norm), ReLU and
            # upsampling keep the layout. Same values; the output is handed back as NCHW. Training stays
            # NCHW: there the native instance-norm backward beats the channels-last one.
            xp = xp.contiguous(memory_format=torch.channels_last)
        wts, hid = self.conditioning(xp, style, strength)
        entry = space_to_depth(xp, self.shuffle) if self.shuffle > 1 else xp
        y = self.decode(self.encode(entry, wts, hid), wts, hid, entry)
        return crop_to(self.activate(y, xp, self.mix(xp, strength)), h, w).contiguous()

    def encode(self, x: torch.Tensor, wts: Optional[torch.Tensor], hid: Optional[torch.Tensor]) -> torch.Tensor:
        """Down-sampling convolutions and residual blocks: (B, 3, H, W) padded → (B, 4·width, H/4, W/4)
        (compact: its space-to-depth (B, 48, H/4, W/4) → (B, 3·width, H/8, W/8))."""
        for layer in self.down:
            x = layer(x, wts, hid)
        for block in self.res:
            x = block(x, wts, hid)
        return x

    def decode(self, y: torch.Tensor, wts: Optional[torch.Tensor], hid: Optional[torch.Tensor],
               entry: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Upsampling stages and the output convolution, before the output activation. In the inference
        form with nearest upsampling and reflection padding, the same sums regrouped
        (pipeline.model.fast_ops): each stage as one low-resolution 2×2 conv to its four output phases,
        interleaved, the 9×9 output conv in space-to-depth form."""
        if self.fast_decoder:  # a constant: TorchScript compiles this only where its layout exists
            if self.inference:
                for stage in self.up:
                    y = stage.regrouped(y, wts, hid)
                if self.shuffle > 1:
                    return self.exit(y, entry)
                return self.out.space_to_depth(y)
        for stage in self.up:
            y = stage(y, wts, hid)
        return self.exit(y, entry) if self.shuffle > 1 else self.out(y)

    def exit(self, y: torch.Tensor, entry: Optional[torch.Tensor]) -> torch.Tensor:
        """The compact exit: a 3×3 conv at ¼ resolution plus the photo's shortcut (`skip`, from the
        space-to-depth `entry`), then depth-to-space to full resolution."""
        assert entry is not None, "the compact exit needs the space-to-depth photo"
        return depth_to_space(self.out(y) + self.skip(entry), self.shuffle)

    def mix(self, x: torch.Tensor, strength: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(B, 1, 1, 1) strengths for `activate`'s mix with the photo, or None (no mix: full strength, also
        when no strength is given, where the mix would be the identity)."""
        if not self.photo_mix or strength is None:
            return None
        return strength_values(strength, x.shape[0], x).view(-1, 1, 1, 1)

    def activate(self, y: torch.Tensor, x: Optional[torch.Tensor] = None, mix: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The output activation: sigmoid (ours) or clamp to [0, 1] (imported linear-output models); with
        `mix` s (B, 1, 1, 1), sigmoid(s·y + (1 − s)·logit(x)) for the photo `x` (padded like y)."""
        if self.clamp_output:
            return y.clamp(0.0, 1.0)
        if mix is not None and x is not None:
            photo = torch.logit(x.clamp(self.photo_eps, 1.0 - self.photo_eps))
            y = mix * y + (1.0 - mix) * photo
        return torch.sigmoid(y)

    def norms(self) -> list[InstanceNorm2d]:
        """The instance-norm layers in the order the forward pass meets them (empty for other norms)."""
        return [m for m in self.modules() if isinstance(m, InstanceNorm2d)]


def build_generator(arch: str = "residual", **kwargs) -> nn.Module:
    """Build a generator by name: `residual` (Johnson), `compact` (the same, laid out for cost) or
    `multiscale` (Ulyanov). Several styles and the strength control (`n_styles`, `strength`) exist for
    the first two."""
    check_choice("arch", arch, ARCHS)
    if arch == "multiscale" and (kwargs.get("n_styles", 1) > 1 or kwargs.get("strength")):
        raise ValueError("several styles and the strength control need arch='residual' or 'compact' (conditional "
                         "instance norm is implemented for Johnson et al.'s generator)")
    if arch == "multiscale":
        kwargs.pop("n_styles", None), kwargs.pop("strength", None)
        return MultiScaleGenerator(**kwargs)
    return ResidualGenerator(**kwargs, layout="compact" if arch == "compact" else "classic")
