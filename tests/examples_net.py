"""pytorch/examples' fast_neural_style network written out independently of the pipeline (no tests here):
a state dict in its key layout and its forward pass from the network's description."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def examples_state_dict(width: int = 32, n_res: int = 5, seed: int = 0, stale: bool = False) -> dict[str, torch.Tensor]:
    """A TransformerNet-layout state dict built here from the key layout: conv layers with
    PyTorch-like random init, instance-norm affines away from 1/0 so they matter."""
    g = torch.Generator().manual_seed(seed)
    convs = {"conv1": (3, width, 9), "conv2": (width, 2 * width, 3), "conv3": (2 * width, 4 * width, 3),
             "deconv1": (4 * width, 2 * width, 3), "deconv2": (2 * width, width, 3), "deconv3": (width, 3, 9)}
    norms = {"in1": width, "in2": 2 * width, "in3": 4 * width, "in4": 2 * width, "in5": width}
    for k in range(1, n_res + 1):
        convs.update({f"res{k}.conv1": (4 * width, 4 * width, 3), f"res{k}.conv2": (4 * width, 4 * width, 3)})
        norms.update({f"res{k}.in1": 4 * width, f"res{k}.in2": 4 * width})
    sd = {}
    for name, (cin, cout, k) in convs.items():
        bound = 1 / (cin * k * k) ** 0.5
        sd[f"{name}.conv2d.weight"] = (torch.rand(cout, cin, k, k, generator=g) * 2 - 1) * bound
        sd[f"{name}.conv2d.bias"] = (torch.rand(cout, generator=g) * 2 - 1) * bound
    for name, c in norms.items():
        sd[f"{name}.weight"] = 1 + 0.3 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.3 * torch.randn(c, generator=g)
        if stale:  # what files saved by PyTorch < 0.4 carry
            sd[f"{name}.running_mean"], sd[f"{name}.running_var"] = torch.zeros(c), torch.ones(c)
    return sd


def reference_forward(sd: dict[str, torch.Tensor], x255: torch.Tensor) -> torch.Tensor:
    """That network's forward, written from its description (0..255 in, 0..255 out, no activation)."""
    def conv(name, x, stride=1, up=False):
        w, b = sd[f"{name}.conv2d.weight"], sd[f"{name}.conv2d.bias"]
        if up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.conv2d(F.pad(x, [w.shape[-1] // 2] * 4, mode="reflect"), w, b, stride)

    def norm(name, x):
        return F.instance_norm(x, weight=sd[f"{name}.weight"], bias=sd[f"{name}.bias"], eps=1e-5)

    y = F.relu(norm("in1", conv("conv1", x255)))
    y = F.relu(norm("in2", conv("conv2", y, 2)))
    y = F.relu(norm("in3", conv("conv3", y, 2)))
    k = 1
    while f"res{k}.in1.weight" in sd:
        r = F.relu(norm(f"res{k}.in1", conv(f"res{k}.conv1", y)))
        y = y + norm(f"res{k}.in2", conv(f"res{k}.conv2", r))
        k += 1
    y = F.relu(norm("in4", conv("deconv1", y, up=True)))
    y = F.relu(norm("in5", conv("deconv2", y, up=True)))
    return conv("deconv3", y)
