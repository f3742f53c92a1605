"""ONNX export of a generator, for ONNX Runtime, Triton's ONNX backend, mobile and the web.

`torch.onnx.export` (the torch.export-based exporter) with dynamic batch, height and width, opset
18, instance norm kept live as the ONNX `InstanceNormalization` op: the graph is captured from the
generator as trained, its plain NCHW layers (its inference form's channels-last layout and
regrouped decoder are CPU-specific speed-ups that ONNX runtimes do their own way). The metadata
goes into the model's `metadata_props` under the key `instyle`. Needs the `onnx` extra
(onnxscript to export, onnxruntime to check and run): `pip install 'instyle[onnx]'`.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.model.norms import InstanceNorm2d
from pipeline.serve.onnx_runtime import ONNX_METADATA_KEY

OPSET = 18


def require_onnx() -> None:
    """A clear error when the optional ONNX packages are missing."""
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise RuntimeError(f"ONNX export needs {', '.join(missing)}: `pip install 'instyle[onnx]'` (what `make install` "
                           "does), or leave onnx out of --formats")


INPUT_NAMES = ("image", "style", "strength")


def export_onnx(generator: nn.Module, path: Path, metadata_json: str, example: tuple[torch.Tensor, ...],
                dims: tuple[dict[int, Any], ...]) -> None:
    """Write `generator` as ONNX with dynamic batch, H and W and the metadata in metadata_props.
    Inputs `image` and, for a conditioned generator, `style` (B, N) and `strength` (B,)."""
    require_onnx()
    import onnx

    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(generator.eval(), example, dynamo=True, dynamic_shapes=dims, opset_version=OPSET,
                                    input_names=list(INPUT_NAMES[:len(example)]), output_names=["stylized"],
                                    verbose=False)
    model = program.model_proto
    if not any(node.op_type == "InstanceNormalization" for node in model.graph.node) and \
            any(isinstance(m, (nn.InstanceNorm2d, InstanceNorm2d)) for m in generator.modules()):
        raise RuntimeError("the ONNX graph has no InstanceNormalization node: instance norm was not kept live")
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, metadata_json
    onnx.save(model, str(path))
