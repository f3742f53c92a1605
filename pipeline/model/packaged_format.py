"""A generator packaged for distribution: its weights in fp16 `safetensors`, described in the file's header.

What `models/` holds (the starter model a fresh clone stylizes with, no training). The file is the
training checkpoint reduced to what inference needs: the `generator.*` tensors (floating ones in fp16,
which halves the bytes and changes an 8-bit output by about a level: models/starter/README.md measures
it) and, as the header's `instyle` entry, the checkpoint's hyper-parameters, styles and step. Reading
it gives back a checkpoint-shaped dict (fp32 tensors), so export, serving and evaluation take a
`.safetensors` wherever they take a `.ckpt`. safetensors runs no code when it loads (no pickle).
Models load through `pipeline.serve.model_io.load_model` (by file or name, `resolve_model`); packaging
reads and writes the file here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.common.files import atomic_write

SUFFIX = ".safetensors"
HEADER_KEY = "instyle"
# Where the packaged models live: `models/<name>/generator.safetensors` beside the `pipeline` package
# (the project is installed editable, `make install`), found by their folder's name.
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
WEIGHTS_FILE = "generator.safetensors"
GENERATOR_PREFIX = "generator."  # as in a Lightning checkpoint's state dict (pipeline.model.checkpoint)


def write_packaged(ckpt: dict[str, Any], path: str | Path, source: str | None = None) -> Path:
    """Write a training checkpoint's generator to `path` (.safetensors): fp16 floats, header with its
    description. The file appears whole or not at all."""
    from safetensors.torch import save_file  # the loaders below import it only when a file is read

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"{path}: a packaged model is a {SUFFIX} file")
    state = {k[len(GENERATOR_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(GENERATOR_PREFIX)}
    if not state:
        raise ValueError("checkpoint has no 'generator.*' weights")
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    header = {"hyper_parameters": ckpt["hyper_parameters"], "styles": ckpt.get("styles"),
              "style_fingerprints": ckpt.get("style_fingerprints"), "global_step": ckpt.get("global_step"),
              "source": source}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header, sort_keys=True, default=str)})
        tmp.chmod(0o644)  # a file to commit and share (safetensors writes it private)
    return path


def read_packaged(path: str | Path) -> dict[str, Any]:
    """A packaged model as a checkpoint-shaped dict: {'state_dict': {'generator.*': fp32 tensors},
    'hyper_parameters', 'styles', 'global_step'}; a clear error for any other file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if header is None:
        raise ValueError(f"{path}: a safetensors file without the '{HEADER_KEY}' description "
                         "(write it with `python -m pipeline package`)")
    try:
        desc = json.loads(header)
        hparams = dict(desc["hyper_parameters"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: its '{HEADER_KEY}' description is not valid ({e})") from None
    state = {GENERATOR_PREFIX + k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return {"state_dict": state, "hyper_parameters": hparams, "styles": desc.get("styles"),
            "style_fingerprints": desc.get("style_fingerprints"), "global_step": desc.get("global_step")}


def packaged_names() -> list[str]:
    """The names of the models in `models/` (folders holding a generator.safetensors)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in MODELS_DIR.glob(f"*/{WEIGHTS_FILE}"))


def resolve_model(path: str | Path) -> Path:
    """`path` itself when it exists, else a packaged model's file when `path` is a bare name of one
    (`starter` → models/starter/generator.safetensors); else `path` (the loader then says it is missing)."""
    path = Path(path)
    if path.exists() or path.suffix or len(path.parts) != 1:
        return path
    packaged = MODELS_DIR / path.name / WEIGHTS_FILE
    if packaged.is_file():
        return packaged
    names = packaged_names()
    raise FileNotFoundError(f"model {str(path)!r} is neither a file nor a packaged model"
                            + (f" (packaged: {', '.join(names)})" if names else ""))
