"""Load a generator for inference from any of the three forms the project produces.

- `.ckpt`: a Lightning training checkpoint. Loaded with `weights_only=True` (no pickled code
  runs); the generator is rebuilt from `hyper_parameters` and only the `generator.*` weights
  are used, so no VGG weights or style image are needed.
- `.pt`: TorchScript written by `pipeline.export` (metadata embedded as `metadata.json`, the
  generator's weights as `generator_state.pt`: the frozen graph has them only as constants).
- `.pt2`: a `torch.export` program written by `pipeline.export` (same embedded metadata).

`.pt` and `.pt2` models get the generator's state dict as `model.instyle_weights`, which lets
`pipeline.inference` stylize images too large for memory in tiles.

This module is bundled into the TorchServe archive, so it imports only torch and the standard
library at module level; `pipeline.generators` is imported lazily for `.ckpt` only.
"""
from __future__ import annotations

import ctypes
import io
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

METADATA_NAME = "metadata.json"
WEIGHTS_NAME = "generator_state.pt"  # the generator's state dict inside a .pt, for tiled inference
GENERATOR_PREFIX = "generator."


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence the FutureWarning every torch.jit.* call emits in torch ≥ 2.10, here only.

    TorchScript is still the format TorchServe loads natively; the warning is about the
    API's future, not about this use, so it is filtered locally and never globally.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


ENV_REUSE_MEMORY = "INSTYLE_REUSE_FREED_MEMORY"


def reuse_freed_memory(mmap_threshold_mb: int = 128, keep_mb: int = 64) -> bool:
    """Let glibc serve allocations below `mmap_threshold_mb` from its heap and keep up to `keep_mb`
    of free heap mapped (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), instead of a fresh mmap per tensor.

    Why: glibc serves every allocation over 32 MB with a fresh mmap and unmaps it on free, so each
    call of the generator (and each training step) page-faults its whole working set in again; on
    the 2-core VM of docs/benchmarks.md that was ~30 % of a 1080p forward and of a training step.
    The threshold is a trade: with *every* tensor on the heap (no mmap at all) a 1080p forward was
    ~15 % faster still, but heap fragmentation held ~3 GB; at 128 MB the 265 MB full-resolution
    1080p activations still get their own mapping (returned on free) and the peak stays ~1.9 GB.
    Process-wide and idempotent; Linux/glibc only (a no-op elsewhere);
    $INSTYLE_REUSE_FREED_MEMORY=0 turns it off. Returns whether it applied.
    """
    if os.environ.get(ENV_REUSE_MEMORY, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold_mb * 2**20)) and bool(mallopt(m_trim_threshold, keep_mb * 2**20))


def generator_kwargs(hparams: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(arch, constructor kwargs) of the generator a training run used."""
    arch = hparams.get("arch", "residual")
    kwargs: dict[str, Any] = {"norm": hparams.get("norm", "instance"), "padding": hparams.get("padding", "reflect")}
    if arch == "residual":  # `upsample` exists only for the residual generator
        kwargs["upsample"] = hparams.get("upsample", "nearest")
    return arch, kwargs


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as plain data; refuses anything that needs unpickling code."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise ValueError(f"{path}: not a loadable checkpoint with weights_only=True ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path}: not a training checkpoint (needs 'state_dict' and 'hyper_parameters')")
    return ckpt


def generator_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the generator from a checkpoint dict and load its weights (strict), in eval mode."""
    from pipeline.generators import build_generator  # lazy: not bundled into the .mar

    arch, kwargs = generator_kwargs(dict(ckpt["hyper_parameters"]))
    generator = build_generator(arch, **kwargs)
    state = {k[len(GENERATOR_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(GENERATOR_PREFIX)}
    if not state:
        raise ValueError("checkpoint has no 'generator.*' weights")
    generator.load_state_dict(state, strict=True)
    return generator.eval()


def checkpoint_metadata(ckpt: dict[str, Any], source: str | Path | None = None) -> dict[str, Any]:
    """The metadata describing a checkpoint's generator (what `export` embeds, minus export facts)."""
    hp = dict(ckpt["hyper_parameters"])
    arch, kwargs = generator_kwargs(hp)
    style = hp.get("style_image")
    return {
        "style_image": Path(str(style)).name if style else None,
        "arch": arch,
        "generator_kwargs": kwargs,
        "vgg_flavour": hp.get("vgg_flavour"),
        "global_step": ckpt.get("global_step"),
        "lightning_version": ckpt.get("pytorch-lightning_version"),
        "checkpoint": str(source) if source is not None else None,
        "hyper_parameters": _jsonable(hp),
    }


def _jsonable(value: Any) -> Any:
    """Hyper-parameters as JSON-safe values (paths and other objects become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model, metadata) for a `.pt`, `.pt2` or `.ckpt` file; the model maps (B, 3, H, W) in [0, 1]
    to the same shape in [0, 1], is in eval mode, and is meant to be called under inference_mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    reuse_freed_memory()
    suffix = path.suffix.lower()
    if suffix == ".pt":
        extra = {METADATA_NAME: "", WEIGHTS_NAME: ""}
        with quiet_jit():
            model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        if extra[WEIGHTS_NAME]:  # exports since the tiling change carry the weights next to the frozen graph
            model.instyle_weights = torch.load(io.BytesIO(extra[WEIGHTS_NAME]), map_location=device, weights_only=True)
        return model.eval(), _parse_metadata(extra[METADATA_NAME], path)
    if suffix == ".pt2":
        extra = {METADATA_NAME: ""}
        program = torch.export.load(str(path), extra_files=extra)
        model = program.module()
        # The graph was captured in eval mode, so its ops already are eval ops; the unlifted module
        # refuses .eval(), so only the flags are set, for callers that check `training`.
        for m in model.modules():
            m.training = False
        if torch.device(device).type != "cpu":
            model = model.to(device)
        model.instyle_weights = dict(model.state_dict())  # for tiled inference (pipeline.inference)
        return model, _parse_metadata(extra[METADATA_NAME], path)
    if suffix == ".ckpt":
        ckpt = read_checkpoint(path)
        return generator_from_checkpoint(ckpt).to(device), checkpoint_metadata(ckpt, path)
    raise ValueError(f"{path}: unknown model file type {suffix!r}; use .pt, .pt2 or .ckpt")


def _parse_metadata(text: str | bytes, path: Path) -> dict[str, Any]:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        warnings.warn(f"{path}: embedded {METADATA_NAME} is not valid JSON; ignoring it", stacklevel=3)
        return {}
