"""Which generator a run builds: its options as given, as FROM has them (pipeline/train/adapt.py) or the
defaults, and what a resumed checkpoint must match."""
from __future__ import annotations

from typing import Any, TYPE_CHECKING

import torch
from lightning.pytorch.utilities import rank_zero_warn

from pipeline.model.generators import CONDITIONED_ARCHS

if TYPE_CHECKING:
    from pipeline.train.adapt import Base

# The options that shape the generator's weights (the module's own defaults: `None` there means these).
# With FROM they are FROM's, and a given one must agree.
ARCH_DEFAULTS = {"arch": "residual", "norm": "instance", "padding": "reflect", "upsample": "nearest", "width": 32,
                 "n_residual": 5, "strength_control": False}


def resolve_architecture(base: "Base | None", given: dict[str, Any]) -> dict[str, Any]:
    """The generator options of a run: FROM's where it has them (a given one must agree, else a clear
    error), else the given ones, else ARCH_DEFAULTS; the strength control as the generator can have it."""
    resolved = {}
    for key, default in ARCH_DEFAULTS.items():
        value = given.get(key)
        if base is not None:
            if value is not None and value != base.arch[key]:
                raise ValueError(f"--model.{key}={value} contradicts FROM={base.source}, which has {key}={base.arch[key]}: "
                                 f"added styles share FROM's generator (leave --model.{key} out)")
            value = base.arch[key]
        resolved[key] = default if value is None else value
    resolved["strength_control"] = strength_control_for(resolved["strength_control"], resolved["arch"], resolved["norm"])
    return resolved


def strength_control_for(requested: bool, arch: str, norm: str) -> bool:
    """The strength control as this generator can have it: it conditions the residual generator's
    instance norms (residual or compact), so it is turned off, with a warning, for batch norm, no norm or the multi-scale
    generator (the paper's baselines, which the presets' default must not block)."""
    if requested and (arch not in CONDITIONED_ARCHS or norm != "instance"):
        rank_zero_warn(f"strength control turned off: it conditions instance norm in the residual generator, and this "
                       f"run trains arch={arch}, norm={norm} (pass --model.strength_control=false to silence this)")
        return False
    return requested


def check_generator_matches(state_dict: dict[str, torch.Tensor], generator: torch.nn.Module) -> None:
    """A clear error when a resumed checkpoint's generator is not the one this run builds (e.g. a run
    from before the strength control, resumed with the presets that now turn it on)."""
    saved = {k[len("generator."):]: v for k, v in state_dict.items() if k.startswith("generator.")}
    ours = generator.state_dict()
    if saved.keys() == ours.keys() and all(saved[k].shape == v.shape for k, v in ours.items()):
        return

    def describe(state: dict[str, torch.Tensor]) -> tuple[int, bool]:
        first_norm = state.get("down.0.1.weight")
        return (int(first_norm.shape[0]) if first_norm is not None and first_norm.dim() == 2 else 1,
                any(k.startswith("strength_net.") for k in state))

    (n_saved, strength_saved), (n_ours, strength_ours) = describe(saved), describe(ours)
    raise ValueError(
        f"the checkpoint's generator ({n_saved} style(s), strength control {'on' if strength_saved else 'off'}) is not "
        f"the one this run builds ({n_ours} style(s), strength control {'on' if strength_ours else 'off'}): resume "
        f"with the checkpoint's own settings, e.g. --model.strength_control={'true' if strength_saved else 'false'} "
        f"and the same styles and width")
