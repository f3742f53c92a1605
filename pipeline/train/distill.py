"""Distillation (`make distill NAME=<teacher>`): a student generator, by default the compact one
(pipeline/model/generators.py), trained from a trained model's outputs, so any model — the starter,
a run of yours, an imported one — gets a fast twin with the same styles and strength control.

Per sample the student sees a photo, one of the teacher's styles and a strength drawn as training
draws them (pipeline/train/module.py), and the frozen teacher stylizes the same photo with the same
style and strength. The student's loss (`distill_terms`) is the perceptual loss with the teacher's
output in place of the painting: the Gram matrices of the teacher's output on *this* photo as the style
target (the teacher's features, so no painting is needed: an imported model has none), the photo's
VGG features as the content target (what `make eval` judges), total variation, plus
`distill_weight` × the mean squared difference from the teacher's pixels (in 0..1), which carries
what Grams do not see: where the strokes go, and at low strength how close to the photo the output is.
The measured comparison with training the student on the perceptual loss alone: docs/compact.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.loss.losses import PerceptualLoss
from pipeline.model.checkpoint import checkpoint_of, generator_from_checkpoint, read_checkpoint, style_names
from pipeline.model.style_fingerprints import style_fingerprints

DISTILL_WEIGHT = 10.0  # the pixel term's weight: about the style term's size once the student is near the teacher


@dataclass
class Teacher:
    """A trained model to distill: its frozen generator, its styles and whether it has the strength control."""
    source: str
    generator: nn.Module
    styles: list[str]
    fingerprints: list[list[int] | None]
    strength: bool
    hparams: dict[str, Any]


def load_teacher(spec: str) -> Teacher:
    """TEACHER (a packaged model's name, a run folder, a .ckpt or a .safetensors) as a `Teacher`; a clear
    error for one that does not exist or cannot be read."""
    ckpt = read_checkpoint(checkpoint_of(spec, role="TEACHER"))
    generator = generator_from_checkpoint(ckpt).requires_grad_(False)
    strength = any(k.startswith("generator.strength_net.") for k in ckpt["state_dict"])
    return Teacher(str(spec), generator, style_names(ckpt), style_fingerprints(ckpt), strength,
                   dict(ckpt["hyper_parameters"]))


def check_student(teacher: Teacher, style_image: str | None, strength_control: bool | None,
                  init_from: str | None) -> bool:
    """The student's strength control (the teacher's); a clear error for an option that contradicts the
    teacher: its own styles (a student learns exactly the teacher's), the strength control set otherwise
    than the teacher has it, or FROM (a student starts from scratch)."""
    if style_image:
        raise ValueError(f"--model.style_image={style_image}: a student learns the teacher's styles "
                         f"({', '.join(teacher.styles)}) from TEACHER={teacher.source}: leave it out (to add a "
                         "painting, distill first, then `make train STYLE=… FROM=<the student>`)")
    if strength_control is not None and strength_control != teacher.strength:
        raise ValueError(f"--model.strength_control={strength_control} contradicts TEACHER={teacher.source}, which "
                         f"{'has' if teacher.strength else 'does not have'} it: the student has the teacher's "
                         "controls (leave it out)")
    if init_from:
        raise ValueError("distillation trains a new student: it cannot start FROM another model (leave FROM out)")
    return teacher.strength


def teacher_output(teacher: nn.Module, images: torch.Tensor, styles: torch.Tensor | None, n_styles: int,
                   strength: torch.Tensor | None) -> torch.Tensor:
    """The frozen teacher's stylization of `images` with per-sample style indices and strengths (as the
    student gets them), without gradients; in fp32 whatever the student's autocast."""
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        x = images.float()
        if n_styles == 1 and strength is None:
            return teacher(x)
        weights = None if styles is None else nn.functional.one_hot(styles, n_styles).float()
        return teacher(x, weights, strength)


def distill_terms(loss: PerceptualLoss, output: torch.Tensor, target: torch.Tensor, content: torch.Tensor,
                  weight: float) -> dict[str, torch.Tensor]:
    """The student's weighted terms against the teacher's `target` output: style (the target's Grams on
    the same photo), content (the photo's features), tv, distill (pixels) and their total."""
    with torch.no_grad():
        grams = loss.grams(target)
    terms = loss(output, content, style_targets=grams)
    terms["distill"] = weight * (output.float() - target.float()).pow(2).mean()
    terms["total"] = terms["total"] + terms["distill"]
    return terms
