"""Adding styles to a trained model (`make train STYLE=my.jpg FROM=starter`): its generator with one more
(γ, β) row per new painting, initialised from its own rows, and what learns.

Dumoulin, Shlens & Kudlur (ICLR 2017) showed that a new style can be learned on a trained N-style
network by training only its conditional-norm rows. Here `learn` chooses:

- `new_styles`: the new rows of every instance norm and the new styles' columns of the strength
  network's first layer. Every other weight is frozen (no weight gradients for the convolutions: a
  cheaper step) and each of FROM's styles gives bit-identical outputs at any strength (a mix of them:
  the same sums in another order, within float rounding).
- `all`: every weight, FROM's shared ones at `shared_lr`. FROM's styles drift unless they are replayed
  (`replay_weight` > 0: samples in FROM's styles are pulled toward FROM's own output).

The measured trade-offs and the default are in docs/training.md#adding-a-style.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.model.generators import CONDITIONED_ARCHS
from pipeline.model.checkpoint import GENERATOR_PREFIX, checkpoint_of, generator_kwargs, read_checkpoint, style_names
from pipeline.model.style_fingerprints import SAME_PAINTING, distance, fingerprint, style_fingerprints

LEARN = ("all", "new_styles")


@dataclass
class Base:
    """A trained generator to add styles to: what it was built with and its weights."""
    source: str
    arch: dict[str, Any]  # ARCH_DEFAULTS' keys, as FROM has them
    state: dict[str, torch.Tensor]  # the generator's state dict (no prefix)
    styles: list[str]
    fingerprints: list[list[int] | None] = field(default_factory=list)

    @property
    def n_styles(self) -> int:
        return len(self.styles)


def load_base(spec: str) -> Base:
    """FROM as a `Base`, or a clear error for a model that has no per-style rows to add to."""
    ckpt = read_checkpoint(checkpoint_of(spec))
    hp = dict(ckpt["hyper_parameters"])
    arch, kwargs = generator_kwargs(hp, ckpt["state_dict"])
    if arch not in CONDITIONED_ARCHS or kwargs.get("norm") != "instance":
        raise ValueError(f"FROM={spec} is a {arch} generator with {kwargs.get('norm')} norm: styles are added as rows of "
                         "conditional instance norm, which only the residual and compact generators with instance norm have")
    if kwargs.get("output", "sigmoid") != "sigmoid":
        raise ValueError(f"FROM={spec} is an imported model (linear output, pytorch/examples): it has no per-style "
                         "parameters to add a row to; train from scratch, or FROM=starter")
    if kwargs.get("n_styles", 1) == 1 and not kwargs.get("strength"):
        raise ValueError(f"FROM={spec} has one style and plain instance norm: its convolutions were trained for that "
                         "one painting, with no per-style (γ, β) rows to add to; use a multi-style model (FROM=starter) "
                         "or train from scratch")
    state = {k[len(GENERATOR_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(GENERATOR_PREFIX)}
    names = style_names(ckpt)
    shape = {"arch": arch, "norm": kwargs["norm"], "padding": kwargs["padding"], "upsample": kwargs["upsample"],
             "width": kwargs["width"], "n_residual": kwargs["n_residual"], "strength_control": bool(kwargs.get("strength"))}
    return Base(str(spec), shape, state, names, style_fingerprints(ckpt))


def check_new_styles(base: Base, names: list[str], images: list[torch.Tensor]) -> list[list[int]]:
    """The new styles' fingerprints; a clear error for a style FROM already has, by name or by content."""
    prints = [fingerprint(img) for img in images]
    for name, new in zip(names, prints):
        if name in base.styles:
            raise ValueError(f"FROM={base.source} already has a style named {name!r}: rename the file to add it as "
                             "another style")
        for old_name, old in zip(base.styles, base.fingerprints):
            if old is not None and distance(new, old) < SAME_PAINTING:
                raise ValueError(f"style {name!r} is the painting FROM={base.source} already has as {old_name!r} "
                                 f"(their images differ by {distance(new, old):.3f} < {SAME_PAINTING} on average)")
    return prints


def grafted_state(base: Base, n_new: int, keep: bool) -> dict[str, torch.Tensor]:
    """FROM's weights for a generator with FROM's styles (if `keep`) followed by `n_new` new ones. A new
    style starts at the mean of FROM's rows (γ, β, and its strength-network column): a style between
    FROM's, whose outputs are already images, rather than γ = 1, β = 0."""
    old = slice(None) if keep else slice(0, 0)
    state = {}
    for key, value in base.state.items():
        if key.endswith(("weight", "bias")) and key.startswith(("down.", "res.", "up.")) and value.dim() == 2:
            state[key] = torch.cat([value[old], value.mean(0, keepdim=True).expand(n_new, -1)])
        elif key == "strength_net.linear.weight":  # columns: the N styles' weights, then the strength
            styles, s = value[:, :base.n_styles], value[:, base.n_styles:]
            state[key] = torch.cat([styles[:, old], styles.mean(1, keepdim=True).expand(-1, n_new), s], dim=1)
        else:
            state[key] = value.clone()
    return state


def new_style_parameters(generator: nn.Module, first_new: int) -> list[nn.Parameter]:
    """`learn=new_styles`: freeze the generator except its per-style tensors, whose rows (columns of the
    strength network) of styles before `first_new` get zero gradients, so Adam never moves them."""
    generator.requires_grad_(False)
    learned = []
    for name, p in generator.named_parameters():
        if name.startswith(("down.", "res.", "up.")) and name.endswith(("weight", "bias")) and p.dim() == 2:
            mask = torch.zeros_like(p)
            mask[first_new:] = 1
        elif name == "strength_net.linear.weight":
            mask = torch.zeros_like(p)
            mask[:, first_new:-1] = 1
        else:
            continue
        p.requires_grad_(True)
        p.register_hook(lambda grad, mask=mask: grad * mask.to(grad.dtype))
        learned.append(p)
    return learned


def parameter_groups(generator: nn.Module, learn: str, first_new: int, lr: float,
                     shared_lr: float | None) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: everything at `lr` for a run from scratch (first_new = 0);
    with FROM, the new styles' tensors at `lr` and (learn=all) the rest at `shared_lr`."""
    if first_new == 0 and learn == "all":
        return [{"params": list(generator.parameters()), "lr": lr}]
    if learn == "new_styles":
        return [{"params": new_style_parameters(generator, first_new), "lr": lr}]
    per_style = {n for n, p in generator.named_parameters()
                 if (p.dim() == 2 and n.startswith(("down.", "res.", "up."))) or n == "strength_net.linear.weight"}
    params = dict(generator.named_parameters())
    return [{"params": [params[n] for n in sorted(per_style)], "lr": lr},
            {"params": [p for n, p in params.items() if n not in per_style], "lr": lr if shared_lr is None else shared_lr}]


def replay_loss(generator: nn.Module, teacher: nn.Module, photos: torch.Tensor, first_new: int,
                strength: torch.Tensor | None) -> torch.Tensor:
    """MSE between the generator's and FROM's (the teacher's) outputs for `photos`, each in a random one of
    FROM's kept styles (indices < `first_new`), at `strength` (as training draws them) or, for half of
    the photos, a uniform one: the old styles are held along the whole slider."""
    styles = torch.randint(first_new, (len(photos),), device=photos.device)
    if strength is not None:
        strength = torch.where(torch.rand_like(strength) < 0.5, strength, torch.rand_like(strength))
    weights = F.one_hot(styles, generator.n_styles).to(photos.dtype)
    with torch.no_grad():
        target = teacher(photos, weights[:, :teacher.n_styles], strength)
    return F.mse_loss(generator(photos, weights, strength), target)


@torch.no_grad()
def kept_drift(generator: nn.Module, teacher: nn.Module, photos: torch.Tensor) -> torch.Tensor:
    """The largest change of any output pixel, in levels of 255, between the generator and FROM over
    FROM's styles (the teacher's first rows), at full and half strength."""
    drift = torch.zeros((), device=photos.device)
    for k in range(teacher.n_styles):
        weights = F.one_hot(torch.full((len(photos),), k, device=photos.device), generator.n_styles).to(photos.dtype)
        for s in ([1.0, 0.5] if teacher.has_strength else [None]):
            strength = None if s is None else torch.full((len(photos),), s, device=photos.device, dtype=photos.dtype)
            diff = generator(photos, weights, strength) - teacher(photos, weights[:, :teacher.n_styles], strength)
            drift = torch.maximum(drift, diff.abs().max() * 255)
    return drift
