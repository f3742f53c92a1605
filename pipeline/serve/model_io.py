"""The one model loader: `load_model(path or name, device)` for every form the project writes.

- `.ckpt`: a Lightning training checkpoint, read as plain data by `pipeline.model.checkpoint`
  (`weights_only=True`; only the `generator.*` weights are used); `.safetensors`, a packaged model
  (`pipeline.model.packaged_format`), the same way, also by its name (`starter`: models/starter/).
- `.pt`: TorchScript written by `pipeline.export.exporter` (metadata embedded as `metadata.json`, the
  generator's weights as `generator_state.pt`: the frozen graph has them only as constants).
- `.pt2`: a `torch.export` program written by `pipeline.export.exporter` (same embedded metadata).
- `.onnx`: run by ONNX Runtime (`pipeline.serve.onnx_runtime`, the optional `onnx` extra), imported
  only when an .onnx is asked for. TorchServe serves `.pt2` / `.pt`, so the `.mar` does not bundle it
  (`pipeline.export.archive` follows module-level imports only).

Every form is run in the generator's inference form (`ResidualGenerator.for_inference`: what export
captured; a `.ckpt` is switched to it here). The exported forms also get the eager generator their
graph was made from, rebuilt from the embedded metadata and weights, as `model.instyle_generator`:
`pipeline.serve.tiling` runs its modules to stylize images too large for memory in tiles, and sizes
its memory estimate from it.

The serving core (with `pipeline.model`, the generator's definition, torch only); it imports nothing
of training. The readers below it (`read_checkpoint`, `read_packaged`) are its building blocks; other
code loads models through `load_model`.
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
from torch.export.passes import move_to_device_pass

from pipeline.model.checkpoint import (checkpoint_metadata, generator_from_checkpoint, generator_from_weights,
                                       read_checkpoint)
from pipeline.model.packaged_format import packaged_names, resolve_model
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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """(model, metadata) for a `.pt2`, `.pt`, `.onnx`, `.ckpt` or `.safetensors` file, or a packaged model
    by name (`starter`); a clear FileNotFoundError / ValueError for anything else. The model maps
    (B, 3, H, W) in [0, 1] to the same shape in [0, 1] (a multi-style or strength model also takes the
    style weights and strengths: `pipeline.serve.controls.call_model`), is in eval mode, and is meant
    to be called under inference_mode. Every form carries `instyle_generator` (the eager generator,
    for tiled inference; None when it cannot be rebuilt) and `instyle_controls` (its styles and
    strength control)."""
    path = resolve_model(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".pt":
        extra = {METADATA_NAME: "", WEIGHTS_NAME: ""}
        with quiet_jit():
            model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        weights = None
        if extra[WEIGHTS_NAME]:  # exports since the tiling change carry the weights next to the frozen graph
            weights = torch.load(io.BytesIO(extra[WEIGHTS_NAME]), map_location=device, weights_only=True)
        model, meta = model.eval(), _parse_metadata(extra[METADATA_NAME], path)
    elif suffix == ".pt2":
        extra = {METADATA_NAME: ""}
        program = torch.export.load(str(path), extra_files=extra)
        weights = dict(program.state_dict)  # as saved (on the CPU), for the eager twin
        if torch.device(device).type != "cpu":
            # Exports since graph_devices have no device constants, but older ones name the CPU where
            # the style weights and strengths are cast (constants and metadata asserts): `.to(device)`
            # would move only the parameters. torch.export's pass moves both (tests/test_device_agnostic.py).
            program = move_to_device_pass(program, torch.device(device))
        model = program.module()
        # The graph was captured in eval mode, so its ops already are eval ops; the unlifted module
        # refuses .eval(), so only the flags are set, for callers that check `training`.
        for m in model.modules():
            m.training = False
        meta = _parse_metadata(extra[METADATA_NAME], path)
    elif suffix == ".onnx":
        # onnxruntime only when an .onnx is asked for; a function-level import, so the .mar leaves it out
        from pipeline.serve.onnx_runtime import OnnxGenerator

        model = OnnxGenerator(path, device=device)
        meta, weights = _parse_metadata(model.metadata_json, path), model.weights
    elif suffix in (".ckpt", ".safetensors"):
        ckpt = read_checkpoint(path)
        model, meta = generator_from_checkpoint(ckpt).to(device).for_inference(), checkpoint_metadata(ckpt, path)
        weights = None
    else:
        names = packaged_names()
        raise ValueError(f"{path}: unknown model file type {suffix!r}; use .pt2, .pt, .onnx, .ckpt or .safetensors"
                         + (f", or a packaged model's name ({', '.join(names)})" if names else ""))
    return _with_serving_info(model, meta, weights, device), meta


def _with_serving_info(model: Any, meta: dict[str, Any], weights: dict[str, torch.Tensor] | None,
                      device: str | torch.device) -> Any:
    """`model` with `instyle_generator` (its eager twin from `weights`, for tiled inference; None without
    a description) and `instyle_controls` (its styles and strength, `pipeline.serve.controls`)."""
    if weights is not None:
        # in the instance dict, not as a submodule: the graph module's state dict and .to() stay its own
        model.__dict__["instyle_generator"] = _eager_twin(meta, weights, device)
    model.instyle_controls = controls_from_metadata(meta)
    return model


def _eager_twin(meta: dict[str, Any], weights: dict[str, torch.Tensor], device: str | torch.device) -> nn.Module | None:
    """The eager generator an exported graph was made from (metadata's arch and kwargs, the file's
    weights), or None for files without that description (then nothing is tiled)."""
    if "generator_kwargs" not in meta:
        return None
    generator = generator_from_weights(meta.get("arch", "residual"), dict(meta["generator_kwargs"]), weights)
    return None if generator is None else generator.to(device).for_inference()


def _parse_metadata(text: str | bytes, path: Path) -> dict[str, Any]:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        warnings.warn(f"{path}: embedded {METADATA_NAME} is not valid JSON; ignoring it", stacklevel=3)
        return {}
