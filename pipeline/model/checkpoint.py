"""A generator rebuilt from a Lightning training checkpoint, read as plain data.

The checkpoint is loaded with `weights_only=True` (no pickled code runs); the generator is rebuilt
from `hyper_parameters` and only the `generator.*` weights are used, so neither the VGG weights nor
the style image are needed. Imports only torch and the model stage.

A building block of the one loader (`pipeline.serve.model_io.load_model`, which is how models are
loaded); only code that needs the checkpoint itself (export, packaging, training) reads it here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.model.generators import CONDITIONED_ARCHS, build_generator
from pipeline.model.packaged_format import SUFFIX, read_packaged, resolve_model

GENERATOR_PREFIX = "generator."


def generator_kwargs(hparams: dict[str, Any], state: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(arch, constructor kwargs) of the generator a training run used. The number of styles and the
    strength control are read from the generator's weights (`state`, the checkpoint's state dict):
    the weights are what must load, and runs made before these options have neither."""
    arch = hparams.get("arch", "residual")
    kwargs: dict[str, Any] = {"norm": hparams.get("norm", "instance"), "padding": hparams.get("padding", "reflect")}
    if arch in CONDITIONED_ARCHS:  # these exist only for these generators (defaults: runs made before them)
        kwargs["upsample"] = hparams.get("upsample", "nearest")
        kwargs["width"] = int(hparams.get("width", 32))
        kwargs["n_residual"] = int(hparams.get("n_residual", 5))
        if hparams.get("output", "sigmoid") != "sigmoid":  # imported models; trained ones always sigmoid
            kwargs["output"] = hparams["output"]
        norm_weight = (state or {}).get(f"{GENERATOR_PREFIX}down.0.1.weight")
        if norm_weight is not None and norm_weight.dim() == 2:  # conditional instance norm: one row per style
            kwargs["n_styles"] = int(norm_weight.shape[0])
        kwargs.update(strength_kwargs(state or {}, GENERATOR_PREFIX))
    return arch, kwargs


def strength_kwargs(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The strength control's constructor kwargs as the weights (`state`, keys under `prefix`) have it:
    {} without it; version 1 (norms only) for weights from before the `strength_version` buffer."""
    if f"{prefix}strength_net.linear.weight" not in state:
        return {}
    version = state.get(f"{prefix}strength_version")
    return {"strength": True, "strength_version": int(version) if version is not None else 1}


def generator_from_weights(arch: str, kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module | None:
    """The eager generator `arch(**kwargs)` with `state` loaded (strict), in eval mode; None when the
    description or the weights do not make one (an unknown option, a missing or misshapen tensor).
    What lets an exported model's loader rebuild the module its graph was made from."""
    if kwargs.get("strength"):  # exports from before strength_version record only `strength: true`
        kwargs = {**kwargs, **strength_kwargs(state)}
    try:
        generator = build_generator(arch, **kwargs)
        generator.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError):
        return None
    return generator.eval()


def style_names(ckpt: dict[str, Any]) -> list[str]:
    """The styles of a checkpoint's generator, in its order: saved by training since multi-style
    models exist; for older single-style runs, the style image's stem."""
    if ckpt.get("styles"):
        return [str(n) for n in ckpt["styles"]]
    style = dict(ckpt.get("hyper_parameters") or {}).get("style_image")
    if not style:
        return ["style"]
    text = str(style)
    return [text.split(":", 1)[1] if text.startswith("skimage:") else Path(text).stem]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as plain data; refuses anything that needs unpickling code. A packaged
    model (`.safetensors`, pipeline.model.packaged_format) reads as the same shape of dict."""
    if Path(path).suffix == SUFFIX:
        return read_packaged(path)
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
    arch, kwargs = generator_kwargs(dict(ckpt["hyper_parameters"]), ckpt["state_dict"])
    generator = build_generator(arch, **kwargs)
    state = {k[len(GENERATOR_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(GENERATOR_PREFIX)}
    if not state:
        raise ValueError("checkpoint has no 'generator.*' weights")
    generator.load_state_dict(state, strict=True)
    return generator.eval()


def checkpoint_metadata(ckpt: dict[str, Any], source: str | Path | None = None) -> dict[str, Any]:
    """The metadata describing a checkpoint's generator (what `export` embeds, minus export facts)."""
    hp = dict(ckpt["hyper_parameters"])
    arch, kwargs = generator_kwargs(hp, ckpt["state_dict"])
    style = hp.get("style_image")
    return {
        "style_image": Path(str(style)).name if style and "," not in str(style) else (str(style) if style else None),
        "styles": style_names(ckpt),
        "strength_control": bool(kwargs.get("strength", False)),
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


def checkpoint_of(spec: str, role: str = "FROM") -> Path:
    """The weights file FROM (or `role`: a distillation's TEACHER) names: a packaged model's name
    (`starter`), a run folder (its checkpoints/last.ckpt, or runs/<spec>/…), a `.ckpt` or a `.safetensors`."""
    path = Path(spec).expanduser()
    for run in (path, Path("runs") / spec):
        if run.is_dir():
            last = run / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise FileNotFoundError(f"{role}={spec}: the run folder {run} has no checkpoints/last.ckpt")
            return last
    if path.suffix and path.suffix not in (".ckpt", SUFFIX):
        raise ValueError(f"{role}={spec}: a model is read from its weights with its training description: give a "
                         f"run, a .ckpt, a {SUFFIX} or a packaged model's name (an exported {path.suffix} is for serving)")
    try:
        found = resolve_model(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{role}={spec}: {e}; nor is it a run folder") from None
    if not found.is_file():
        raise FileNotFoundError(f"{role}={spec} does not exist (a run folder, a .ckpt, a {SUFFIX} or a packaged model's name)")
    return found
