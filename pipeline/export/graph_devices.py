"""Exported graphs that run on any device: find device constants, and take them out of `.pt2` programs.

A graph captured on the CPU can name that device as a constant: torch.export records every `.to()`
of an input (the style weights and strengths of a conditioned generator, `norms.style_weights` and
`InstanceNorm2d.forward`) as `aten.to.device(x, cpu, dtype)` or `aten.to.dtype(x, dtype)`, each
after an `aten._assert_tensor_metadata(x, dtype=..., device=cpu)` check. On a GPU the first call then
fails with a device mismatch (or the assert fires). `strip_devices` rewrites those nodes without the
device (the dtype is still converted and checked), so the saved `.pt2` is device-agnostic; the
exporter refuses a program in which `device_constants` still finds one.

TorchScript (`.pt`) computes devices at run time (`prim::device(x)`); its frozen weights are tensor
constants that `torch.jit.load(map_location=...)` moves, so only a constant of type Device counts.
ONNX has no device in its graph: an `.onnx` is scanned for attributes naming one all the same.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_ASSERT_METADATA = torch.ops.aten._assert_tensor_metadata.default
_TO_DEVICE = torch.ops.aten.to.device
_TO_DTYPE = torch.ops.aten.to.dtype


def strip_devices(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` with its device constants taken out, in place: metadata asserts check dtype and layout
    only, `to(x, device, dtype)` becomes `to(x, dtype)`. Raises ValueError if another node names a device
    (nothing in the generators creates one; a new op that did would have to be handled here)."""
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op != "call_function":
                continue
            if node.target is _ASSERT_METADATA and "device" in node.kwargs:
                node.kwargs = {k: v for k, v in node.kwargs.items() if k != "device"}
            elif node.target is _TO_DEVICE:
                node.target, node.args = _TO_DTYPE, (node.args[0], *node.args[2:])
        module.recompile()
    found = device_constants(program)
    if found:
        raise ValueError(f"the exported graph still names a device: {'; '.join(found[:3])}")
    return program


def device_constants(model: Any) -> list[str]:
    """Descriptions of the device constants in an exported graph: a torch.export program, a TorchScript
    module, an ONNX ModelProto, or a path to a `.pt2` / `.pt` / `.onnx` file. Empty: device-agnostic."""
    if isinstance(model, (str, Path)):
        model = _load(Path(model))
    if isinstance(model, torch.export.ExportedProgram):
        return [f"{node.format_node()}" for m in model.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
                for node in m.graph.nodes if _names_device((node.args, node.kwargs))]
    if isinstance(model, torch.jit.ScriptModule):
        return [str(node).strip() for node in model.graph.findAllNodes("prim::Constant", True)
                if node.output().type().kind() == "DeviceObjType"]
    if type(model).__name__ == "ModelProto":
        return [f"{node.op_type} {node.name}: {attr.name}" for node in model.graph.node for attr in node.attribute
                if attr.type == attr.STRING and attr.s.decode(errors="replace").split(":")[0] in ("cpu", "cuda")]
    raise TypeError(f"cannot scan {type(model).__name__} for device constants")


def _names_device(value: Any) -> bool:
    if isinstance(value, torch.device):
        return True
    if isinstance(value, (tuple, list)):
        return any(_names_device(v) for v in value)
    if isinstance(value, dict):
        return any(_names_device(v) for v in value.values())
    return False


def _load(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        return torch.export.load(str(path))
    if suffix == ".pt":
        from pipeline.serve.model_io import quiet_jit

        with quiet_jit():
            return torch.jit.load(str(path), map_location="cpu")
    if suffix == ".onnx":
        import onnx

        return onnx.load(str(path))
    raise ValueError(f"{path}: not an exported graph (.pt2, .pt or .onnx)")
