"""Load a generator for the offline tools and evaluation from any file the project writes. The serving
forms (`.pt2`, `.pt`, `.ckpt`, `.safetensors`, by `pipeline.serve.model_io.load_model`), a packaged
model by name (`starter`), and `.onnx`, run by ONNX Runtime (`pipeline.export.onnx_runtime`; the optional
`onnx` extra). Every model comes back with the same call
and the same `instyle_generator` / `instyle_controls` as the serving forms."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.model.packaged_format import resolve_model
from pipeline.serve.model_io import load_model as load_serving_model
from pipeline.serve.model_io import parse_metadata, with_serving_info


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """(model, metadata) for a `.pt2`, `.pt`, `.onnx`, `.ckpt` or `.safetensors` file (see
    `pipeline.serve.model_io`), or a packaged model by name (`starter`: models/starter/)."""
    path = resolve_model(path)
    if path.suffix.lower() != ".onnx":
        return load_serving_model(path, device)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    from pipeline.export.onnx_runtime import OnnxGenerator  # onnxruntime only when an .onnx is asked for

    model = OnnxGenerator(path, device=device)
    meta = parse_metadata(model.metadata_json, path)
    return with_serving_info(model, meta, model.weights, device), meta
