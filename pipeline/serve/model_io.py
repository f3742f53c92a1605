"""Load a generator for inference from any of the three forms the project produces.

- `.ckpt`: a Lightning training checkpoint, read as plain data by `pipeline.model.checkpoint`
  (`weights_only=True`; only the `generator.*` weights are used).
- `.pt`: TorchScript written by `pipeline.export.exporter` (metadata embedded as `metadata.json`, the
  generator's weights as `generator_state.pt`: the frozen graph has them only as constants).
- `.pt2`: a `torch.export` program written by `pipeline.export.exporter` (same embedded metadata).
- `.onnx`: an ONNX model written by `pipeline.export.onnx_export`, run by ONNX Runtime
  (`pipeline.serve.onnx_runtime`; the optional `onnx` extra).

`.pt` and `.pt2` models get the generator's state dict as `model.instyle_weights`, which lets
`pipeline.serve.inference` stylize images too large for memory in tiles.

Part of the serving package bundled whole into the `.mar`: it imports only torch and the standard
library at module level; `pipeline.model` is imported lazily, for `.ckpt` files only (which the
TorchServe handler never loads).
"""
from __future__ import annotations

import io
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from pipeline.serve.controls import controls_from_metadata

METADATA_NAME = "metadata.json"
WEIGHTS_NAME = "generator_state.pt"  # the generator's state dict inside a .pt, for tiled inference


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence the FutureWarning every torch.jit.* call emits in torch ≥ 2.10, here only.

    TorchScript is still the format TorchServe loads natively; the warning is about the
    API's future, not about this use, so it is filtered locally and never globally.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model, metadata) for a `.pt2`, `.pt`, `.onnx` or `.ckpt` file; the model maps (B, 3, H, W) in
    [0, 1] to the same shape in [0, 1] (a multi-style or strength model also takes the style weights
    and strengths: `pipeline.serve.controls.call_model`), is in eval mode, and is meant to be called
    under inference_mode. Every form carries `instyle_weights` (the generator's state dict, for tiled
    inference) and `instyle_output` (its output activation) when they are known, and
    `instyle_controls` (its styles and strength control)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".pt":
        extra = {METADATA_NAME: "", WEIGHTS_NAME: ""}
        with quiet_jit():
            model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        if extra[WEIGHTS_NAME]:  # exports since the tiling change carry the weights next to the frozen graph
            model.instyle_weights = torch.load(io.BytesIO(extra[WEIGHTS_NAME]), map_location=device, weights_only=True)
        model, meta = model.eval(), _parse_metadata(extra[METADATA_NAME], path)
    elif suffix == ".pt2":
        extra = {METADATA_NAME: ""}
        program = torch.export.load(str(path), extra_files=extra)
        model = program.module()
        # The graph was captured in eval mode, so its ops already are eval ops; the unlifted module
        # refuses .eval(), so only the flags are set, for callers that check `training`.
        for m in model.modules():
            m.training = False
        if torch.device(device).type != "cpu":
            model = model.to(device)
        model.instyle_weights = dict(model.state_dict())  # for tiled inference (pipeline.serve.inference)
        meta = _parse_metadata(extra[METADATA_NAME], path)
    elif suffix == ".onnx":
        from pipeline.serve.onnx_runtime import OnnxGenerator

        model = OnnxGenerator(path)
        meta = _parse_metadata(model.metadata_json, path)
    elif suffix == ".ckpt":
        from pipeline.model.checkpoint import checkpoint_metadata, generator_from_checkpoint, read_checkpoint

        ckpt = read_checkpoint(path)
        model, meta = generator_from_checkpoint(ckpt).to(device), checkpoint_metadata(ckpt, path)
    else:
        raise ValueError(f"{path}: unknown model file type {suffix!r}; use .pt2, .pt, .onnx or .ckpt")
    model.instyle_output = (meta.get("generator_kwargs") or {}).get("output", "sigmoid")
    model.instyle_controls = controls_from_metadata(meta)  # styles and strength (pipeline.serve.controls)
    return model, meta


def _parse_metadata(text: str | bytes, path: Path) -> dict[str, Any]:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        warnings.warn(f"{path}: embedded {METADATA_NAME} is not valid JSON; ignoring it", stacklevel=3)
        return {}
