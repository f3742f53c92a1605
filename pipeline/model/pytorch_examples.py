"""Generators trained elsewhere, rebuilt as our `ResidualGenerator` with the same function.

pytorch/examples' `fast_neural_style` (`candy.pth`, `mosaic.pth`, … and what users train with its
`train` command): a `state_dict` of its `TransformerNet` — keys `conv1.conv2d.weight`, `in1.weight`,
`res1.conv1.conv2d.weight`, …, `deconv3.conv2d.bias` — with reflection padding, instance norm with
affine parameters, nearest-×2 + conv upsampling, input and output in 0..255 and no output
activation. That is our residual generator layer for layer; the 0..255 scales are folded into the
first convolution (×255: instance norm follows it) and the last (÷255), and its output is clamped
to [0, 1] (`output="clamp"`) instead of passed through a sigmoid. Any width and number of residual
blocks, read off the tensors' shapes. Pre-0.4 `in*.running_mean` / `running_var` keys are dropped,
as upstream's own loader does. Only `torch.load(weights_only=True)`: nothing pickled runs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from pipeline.model.generators import ResidualGenerator

PYTORCH_EXAMPLES = "pytorch-examples"
_STALE = re.compile(r"^in\d+\.(running_mean|running_var|num_batches_tracked)$|^res\d+\.in\d\.(running_mean|running_var|num_batches_tracked)$")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain {name: tensor} dict from `path`, or a ValueError saying what the file holds instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError for pickled modules, RuntimeError for non-torch files
        hint = (" It looks like a whole pickled module (torch.save(model)): in the project that saved it, save "
                "`model.state_dict()` instead; pickled code is never run here.") if "GLOBAL" in str(e) else ""
        raise ValueError(f"{path}: not a state dict loadable with weights_only=True ({type(e).__name__}).{hint}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # some forks wrap it
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise ValueError(f"{path}: expected a state dict {{name: tensor}}, found {type(obj).__name__}"
                         + (f" with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else ""))
    return obj


def _key_map(g: ResidualGenerator) -> dict[str, str]:
    """pytorch/examples TransformerNet parameter name → ours, found through the generator's named parts."""
    parts = {"conv1.conv2d": g.down[0].conv, "in1": g.down[0].norm, "conv2.conv2d": g.down[1].conv, "in2": g.down[1].norm,
             "conv3.conv2d": g.down[2].conv, "in3": g.down[2].norm, "deconv1.conv2d": g.up[0].unit.conv,
             "in4": g.up[0].unit.norm, "deconv2.conv2d": g.up[1].unit.conv, "in5": g.up[1].unit.norm,
             "deconv3.conv2d": g.out.conv}
    for k, block in enumerate(g.res, 1):
        (conv1, norm1, _), (conv2, norm2, _) = block.layers()
        parts.update({f"res{k}.conv1.conv2d": conv1, f"res{k}.in1": norm1, f"res{k}.conv2.conv2d": conv2,
                      f"res{k}.in2": norm2})
    ours = {id(module): name for name, module in g.named_modules()}
    return {f"{theirs}.{p}": f"{ours[id(module)]}.{p}" for theirs, module in parts.items() for p in ("weight", "bias")}


def from_pytorch_examples(state: dict[str, torch.Tensor], source: str = "state dict") -> tuple[ResidualGenerator, dict[str, Any]]:
    """Our generator with the same function as a pytorch/examples TransformerNet state dict, and what
    was read (width, residual blocks, dropped keys). Clear errors for anything else."""
    dropped = sorted(k for k in state if _STALE.match(k))
    state = {k: v for k, v in state.items() if k not in dropped}
    first = state.get("conv1.conv2d.weight")
    if first is None or first.dim() != 4 or tuple(first.shape[1:]) != (3, 9, 9):
        raise ValueError(f"{source}: not a pytorch/examples TransformerNet state dict (no conv1.conv2d.weight of shape "
                         f"(W, 3, 9, 9); keys start {sorted(state)[:5]})")
    width = int(first.shape[0])
    n_residual = len({m.group(1) for k in state if (m := re.match(r"^res(\d+)\.", k))})
    generator = ResidualGenerator(norm="instance", padding="reflect", upsample="nearest", width=width,
                                  n_residual=n_residual, output="clamp")
    mapping = _key_map(generator)
    unexpected, missing = sorted(set(state) - set(mapping)), sorted(set(mapping) - set(state))
    if unexpected or missing:
        raise ValueError(f"{source}: does not match a TransformerNet of width {width} with {n_residual} residual blocks: "
                         f"unexpected keys {unexpected[:5]}, missing keys {missing[:5]}")
    ours = {mapping[k]: v.detach().float() for k, v in state.items()}
    first_conv, last_conv = mapping["conv1.conv2d.weight"], mapping["deconv3.conv2d.weight"]
    ours[first_conv] = ours[first_conv] * 255.0  # their input is 0..255, ours 0..1
    for key in (last_conv, mapping["deconv3.conv2d.bias"]):  # their output is 0..255, ours 0..1
        ours[key] = ours[key] / 255.0
    try:
        generator.load_state_dict(ours, strict=True)
    except RuntimeError as e:  # shapes that do not fit together (a fork with another layout)
        raise ValueError(f"{source}: tensor shapes do not form a TransformerNet of width {width}: {e}") from None
    info = {"format": PYTORCH_EXAMPLES, "width": width, "n_residual": n_residual, "dropped_keys": dropped}
    return generator.eval(), info
