"""The yardstick: a plain eager fp32 residual style-transfer network and its usual training step.

Written here from the published description (Johnson et al. 2016, with Ulyanov et al.'s instance
norm), in the shape most public implementations take: every conv is reflection-pad + Conv2d,
instance norm with affine parameters, two stride-2 downsampling convs, five residual blocks of
128 channels, nearest ×2 upsampling followed by a conv (twice), a 9×9 output conv. 1.68 M
parameters. It does nothing for speed: NCHW, module by module, as most people run it.

Two deliberate deviations from the most common public script, so that the reference computes
*the same function* as the project's generator and the ratios compare like with like:
- images are float RGB in [0, 1] in and out, so the output goes through a sigmoid;
- the training loss is the project's: Gram style loss on relu1_2/2_2/3_3/4_3, content loss on
  relu2_2, total variation, the same weights. As in the public script, the VGG runs to relu4_3 on
  both the output and the content batch.

`load_from_generator` copies a `pipeline.model.generators.ResidualGenerator`'s weights in, so outputs
and losses of both can be compared one to one (tests/test_bench_reference.py). A generator the presets
train (conditional norms, strength path) is, for one style at one strength, this network with the
norms' (γ, β) it computes for them: `load_from_generator` takes those (first style, full strength).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F
from torchvision.models import vgg16

VGG_TAPS = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}
CAFFE_MEAN = (123.68, 116.779, 103.939)


class RefConv(nn.Module):
    """Reflection padding then a convolution (optionally strided)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class RefUpConv(nn.Module):
    """Nearest-neighbour ×2 upsampling then a reflection-padded convolution (no checkerboard)."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = RefConv(cin, cout, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class RefResidual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.in1 = RefConv(channels, channels, 3), nn.InstanceNorm2d(channels, affine=True)
        self.conv2, self.in2 = RefConv(channels, channels, 3), nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        return x + self.in2(self.conv2(y))


class ReferenceNet(nn.Module):
    """3 → 32 (9×9) → 64 (s2) → 128 (s2) → 5 residual blocks → up 64 → up 32 → 3 (9×9) → sigmoid
    (channel counts for `width` 32; they scale with it, as the forks that ship narrower networks)."""

    def __init__(self, width: int = 32, n_residual: int = 5):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.conv1, self.in1 = RefConv(3, w1, 9), nn.InstanceNorm2d(w1, affine=True)
        self.conv2, self.in2 = RefConv(w1, w2, 3, 2), nn.InstanceNorm2d(w2, affine=True)
        self.conv3, self.in3 = RefConv(w2, w3, 3, 2), nn.InstanceNorm2d(w3, affine=True)
        self.res = nn.Sequential(*[RefResidual(w3) for _ in range(n_residual)])
        self.up1, self.in4 = RefUpConv(w3, w2, 3), nn.InstanceNorm2d(w2, affine=True)
        self.up2, self.in5 = RefUpConv(w2, w1, 3), nn.InstanceNorm2d(w1, affine=True)
        self.conv_out = RefConv(w1, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        y = self.res(y)
        y = F.relu(self.in4(self.up1(y)))
        y = F.relu(self.in5(self.up2(y)))
        return torch.sigmoid(self.conv_out(y))


def reference_for(generator: nn.Module) -> ReferenceNet:
    """A ReferenceNet of the generator's width and depth with its weights."""
    sd = plain_state(generator)
    n_res = len({k.split(".")[1] for k in sd if k.startswith("res.")})
    return load_from_generator(ReferenceNet(sd["down.0.0.1.weight"].shape[0], n_res), generator)


def plain_state(generator: nn.Module) -> dict[str, torch.Tensor]:
    """The generator's state dict with every conditioned norm's (N, C) tables replaced by the (C,) γ, β it
    applies for its first style at full strength (the call without style or strength), the strength
    path and its version buffer left out (at full strength the output's mix with the photo drops out):
    the weights of the plain network that computes the same function."""
    sd = dict(generator.state_dict())
    if not getattr(generator, "conditioned", False):
        return sd
    x = torch.zeros(1, 3, 16, 16)
    with torch.no_grad():
        w, h = generator.conditioning(x)
        names = {id(m): n for n, m in generator.named_modules()}
        for norm in generator.norms():
            gamma, beta = norm.affine(w, h)
            sd[f"{names[id(norm)]}.weight"], sd[f"{names[id(norm)]}.bias"] = gamma[0], beta[0]
    return {k: v for k, v in sd.items()
            if not k.startswith("strength_net.") and ".strength_" not in k and k != "strength_version"}


def load_from_generator(ref: ReferenceNet, generator: nn.Module) -> ReferenceNet:
    """Copy a ResidualGenerator's weights into `ref` (`plain_state`). Both declare their tensors in the same
    order (conv, norm, conv, norm, ...), so they are matched by position, with every shape checked."""
    src, dst = list(plain_state(generator).items()), list(ref.state_dict().items())
    if len(src) != len(dst):
        raise ValueError(f"{len(src)} tensors in the generator, {len(dst)} in the reference")
    new = {}
    for (src_name, s), (dst_name, d) in zip(src, dst):
        if s.shape != d.shape:
            raise ValueError(f"{src_name} {tuple(s.shape)} does not fit {dst_name} {tuple(d.shape)}")
        new[dst_name] = s.detach().clone()
    ref.load_state_dict(new, strict=True)
    return ref


class RefVGG(nn.Module):
    """torchvision's VGG-16 layout up to relu4_3 with the project's verified caffe weights;
    returns the four style activations, all of them, for every input (as the public script does)."""

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from pipeline.loss import vgg_weights  # the same verified Oxford weights as training

        wrapper = nn.Module()
        wrapper.features = vgg16().features[:23]
        wrapper.load_state_dict(vgg_weights.load_state_dict(Path(weights) if weights else None), strict=True)
        self.features = wrapper.features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = x * 255.0 - self.mean
        out = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG_TAPS:
                out[VGG_TAPS[i]] = h
        return out


def gram(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f.bmm(f.transpose(1, 2)) / (c * h * w)


class ReferenceTrainer:
    """The usual training step: y = net(x); VGG on y and on x; Gram style + content + TV; Adam."""

    def __init__(self, net: ReferenceNet, vgg: RefVGG, style: torch.Tensor, *, style_weight: float = 2e-5,
                 content_weight: float = 1e-5, tv_weight: float = 1.0, lr: float = 1e-3):
        self.net, self.vgg = net.train(), vgg
        self.weights = (style_weight, content_weight, tv_weight)
        with torch.no_grad():
            self.style_grams = {k: gram(v) for k, v in vgg(style).items()}
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sw, cw, tw = self.weights
        y = self.net(x)
        fy, fx = self.vgg(y), self.vgg(x)
        style = sum(F.mse_loss(gram(fy[k]), self.style_grams[k].expand(x.shape[0], -1, -1)) for k in VGG_TAPS.values())
        content = F.mse_loss(fy["relu2_2"], fx["relu2_2"])
        tv = (y[:, :, 1:, :] - y[:, :, :-1, :]).pow(2).mean() + (y[:, :, :, 1:] - y[:, :, :, :-1]).pow(2).mean()
        terms = {"style": sw * style, "content": cw * content, "tv": tw * tv}
        terms["total"] = terms["style"] + terms["content"] + terms["tv"]
        return terms

    def step(self, x: torch.Tensor) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        terms = self.losses(x)
        terms["total"].backward()
        self.opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}
