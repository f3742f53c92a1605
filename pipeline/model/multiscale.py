"""Ulyanov et al.'s multi-scale texture-network generator g(x, z) (the paper's own design; no
conditioning: one style per model)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.model.layers import ConvNormAct, Padding, crop_to, pad_to_multiple
from pipeline.model.norms import Norm, make_norm


class MultiScaleGenerator(nn.Module):
    """Ulyanov et al.'s multi-scale generator g(x, z).

    The image is seen at `scales` resolutions (1, 1/2, ... 1/2^(K-1)); at each one a noise
    map z_k is concatenated and passed through a conv block (3×3, 3×3, 1×1). Starting from
    the coarsest, each result is upsampled ×2, normalized and concatenated with the next
    finer branch (also normalized), then mixed by another conv block. A 1×1 conv gives RGB.

    Noise: during training z is uniform in [-0.5, 0.5); in eval mode it defaults to zero (its
    mean), so serving is deterministic. Pass `z` explicitly (a list, finest first) for variety.
    """

    def __init__(self, norm: Norm = "instance", padding: Padding = "reflect", scales: int = 5,
                 branch_channels: int = 8, noise_channels: int = 3):
        super().__init__()
        if scales < 1:
            raise ValueError(f"scales must be ≥ 1, got {scales}")
        self.scales, self.noise_channels = scales, noise_channels
        c = branch_channels

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(ConvNormAct(cin, cout, 3, norm=norm, padding=padding, act="leaky"),
                                 ConvNormAct(cout, cout, 3, norm=norm, padding=padding, act="leaky"),
                                 ConvNormAct(cout, cout, 1, norm=norm, padding=padding, act="leaky"))

        self.branches = nn.ModuleList([block(3 + noise_channels, c) for _ in range(scales)])
        # Join i (coarse → fine) merges the running result ((i+1)·c channels) with a c-channel branch.
        self.join_norm_coarse = nn.ModuleList([make_norm(norm, c * (i + 1)) for i in range(scales - 1)])
        self.join_norm_fine = nn.ModuleList([make_norm(norm, c) for _ in range(scales - 1)])
        self.joins = nn.ModuleList([block(c * (i + 2), c * (i + 2)) for i in range(scales - 1)])
        self.out = nn.Conv2d(c * scales, 3, 1)

    def forward(self, x: torch.Tensor, z: list[torch.Tensor] | None = None) -> torch.Tensor:
        multiple = 1 << (self.scales - 1)  # int (2 ** n is a float under TorchScript)
        xp, h, w = pad_to_multiple(x, multiple, 2 * multiple)  # coarsest level ≥ 2 px for its 3×3 reflection
        pyramid = [xp]
        for _ in range(self.scales - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2))
        feats: list[torch.Tensor] = []
        # Iterate the ModuleLists directly (TorchScript cannot index them with a loop variable).
        for k, branch in enumerate(self.branches):
            img = pyramid[k]
            noise = z[k] if z is not None else self._noise(img)
            feats.append(branch(torch.cat([img, noise], dim=1)))
        y = feats[-1]  # coarsest
        for i, (norm_coarse, norm_fine, join) in enumerate(zip(self.join_norm_coarse, self.join_norm_fine, self.joins)):
            fine = feats[self.scales - 2 - i]
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = join(torch.cat([norm_coarse(y), norm_fine(fine)], dim=1))
        return crop_to(torch.sigmoid(self.out(y)), h, w)

    def for_inference(self) -> "MultiScaleGenerator":
        """The serving form, in place: eval mode (zero noise), no gradients. Its layers have no faster form."""
        self.eval().requires_grad_(False)
        return self

    def _noise(self, img: torch.Tensor) -> torch.Tensor:
        shape = (img.shape[0], self.noise_channels, img.shape[2], img.shape[3])
        if self.training:
            return torch.rand(shape, device=img.device, dtype=img.dtype) - 0.5
        return torch.zeros(shape, device=img.device, dtype=img.dtype)
