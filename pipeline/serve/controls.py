"""Per-request style controls: which style (or mix) and what strength, checked against the model.

    style     "starry_night" | "starry_night:0.7,the_great_wave:0.3" (weights ≥ 0, normalized) |
              "" / absent → the model's first style
    strength  a number in [0, 1]; absent → 1 (full style); only for models trained with the control

Shared by the TorchServe handler and the offline CLI; imports only torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from pipeline.common.image_codec import BadImageRequest
from pipeline.common.image_sources import style_name


@dataclass(frozen=True)
class ModelControls:
    """What a loaded model accepts: its style names (in the generator's order), whether it takes a
    strength, and whether it is conditioned at all (plain single-style models take the image only)."""
    styles: tuple[str, ...]
    strength: bool = False

    @property
    def conditioned(self) -> bool:
        return len(self.styles) > 1 or self.strength

    def describe(self) -> str:
        strength = "strength 0..1" if self.strength else "no strength control"
        return f"styles: {', '.join(self.styles)}; {strength}"


def controls_from_metadata(meta: Mapping[str, Any]) -> ModelControls:
    """The controls of a model from its embedded metadata (exports before multi-style: one style, no strength)."""
    kwargs = meta.get("generator_kwargs") or {}
    styles = meta.get("styles")
    if not styles:  # exports from before multi-style recorded only the style image's file name
        styles = [style_name(meta.get("style_image") or "style")]
    n_styles = int(kwargs.get("n_styles", 1))
    if len(styles) != n_styles:
        raise ValueError(f"model metadata names {len(styles)} style(s) but the generator has {n_styles}")
    return ModelControls(tuple(str(s) for s in styles), bool(kwargs.get("strength", False)))


def model_description(meta: Mapping[str, Any], controls: ModelControls) -> dict[str, Any]:
    """What a model offers and how it was made: its styles (the first is the default), the strength
    control, the generator and the training hyper-parameters (TorchServe's describe API and
    `python -m pipeline describe`)."""
    return {"styles": list(controls.styles), "default_style": controls.styles[0], "strength_control": controls.strength,
            "style_image": meta.get("style_image"), "global_step": meta.get("global_step"), "run": meta.get("run"),
            "generator": {"arch": meta.get("arch"), **(meta.get("generator_kwargs") or {})},
            "hyper_parameters": meta.get("hyper_parameters")}


@dataclass(frozen=True)
class Conditioning:
    """One request's resolved controls: convex style weights (N,) and a strength."""
    weights: tuple[float, ...]
    strength: float = 1.0


def parse_style(spec: str | None, controls: ModelControls) -> tuple[float, ...]:
    """`name` or `name:weight,name:weight,...` → convex weights over the model's styles (BadImageRequest
    naming the problem and listing the styles)."""
    n = len(controls.styles)
    if spec is None or not spec.strip():
        return tuple(1.0 if i == 0 else 0.0 for i in range(n))
    weights = [0.0] * n
    listing = f"; this model's styles: {', '.join(controls.styles)}"
    for part in spec.split(","):
        name, sep, raw = part.strip().partition(":")
        name = name.strip()
        if name not in controls.styles:
            raise BadImageRequest(f"unknown style {name!r}{listing}")
        try:
            weight = float(raw) if sep else 1.0
        except ValueError:
            raise BadImageRequest(f"style weight {raw.strip()!r} for {name} is not a number{listing}") from None
        if not math.isfinite(weight) or weight < 0:
            raise BadImageRequest(f"style weight {raw.strip()} for {name} must be a finite number ≥ 0{listing}")
        weights[controls.styles.index(name)] += weight
    total = sum(weights)
    if total <= 0:
        raise BadImageRequest(f"style weights in {spec!r} sum to 0; give at least one positive weight{listing}")
    return tuple(w / total for w in weights)


def parse_strength(raw: str | None, controls: ModelControls) -> float:
    """A strength in [0, 1] (absent or empty: 1); refused on models trained without the control."""
    if raw is None or not str(raw).strip():
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise BadImageRequest(f"strength={raw!r} is not a number; use a value in [0, 1]") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise BadImageRequest(f"strength={raw} is outside [0, 1]")
    if not controls.strength and value != 1.0:
        raise BadImageRequest(f"this model was trained without the strength control; omit strength or use 1 "
                              f"({controls.describe()})")
    return value


def conditioning(params: Mapping[str, str], controls: ModelControls) -> Conditioning:
    """The request's `style` and `strength` options, resolved for the model."""
    return Conditioning(parse_style(params.get("style"), controls), parse_strength(params.get("strength"), controls))


def condition_tensors(conditions: Sequence[Conditioning] | None, controls: ModelControls | None,
                      x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The generator's (style weights (B, N), strengths (B,)) inputs for a batch like `x`, one row per
    image; None for what the model does not take."""
    if controls is None or not controls.conditioned:
        return None, None
    conditions = conditions or [Conditioning(parse_style(None, controls))] * x.shape[0]
    weights = _on_device([c.weights for c in conditions], x)
    if not controls.strength:
        return weights, None
    return weights, _on_device([c.strength for c in conditions], x)


def _on_device(rows: list, like: torch.Tensor) -> torch.Tensor:
    """A tensor of `rows` in `like`'s dtype on `like`'s device: made on the host and copied into a buffer
    on the device, as torch.tensor(..., device=) does, but written so that it also runs under
    FakeTensorMode (whose constant propagation would run torch.tensor's copy on a real GPU) for the
    device tests (tests/test_device_agnostic.py)."""
    host = torch.tensor(rows, dtype=like.dtype)
    return torch.empty(host.shape, dtype=like.dtype, device=like.device).copy_(host)


def call_model(model: Any, x: torch.Tensor, conditions: Sequence[Conditioning] | None,
               controls: ModelControls | None) -> torch.Tensor:
    """model(x) for plain models; model(x, weights (B, N)[, strengths (B,)]) for conditioned ones, one
    row per image (a batch may mix styles and strengths)."""
    style, strength = condition_tensors(conditions, controls, x)
    if style is None:
        return model(x)
    return model(x, style) if strength is None else model(x, style, strength)
