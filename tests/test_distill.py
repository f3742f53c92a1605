"""Distillation (`make distill NAME=<teacher>`, pipeline/train/distill.py): the student takes the teacher's
styles and controls, learns toward the teacher's outputs, and bad inputs are refused clearly. The real
chain (`make distill` on a run → export → stylize) is the slow test at the end."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.train.module import StyleTransferModule
from serving_helpers import make_checkpoint
from train_helpers import fit_cmd, random_photos

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "pipeline/train/configs/distill.yaml"


def student(teacher: Path | str, vgg: Path, **kw) -> StyleTransferModule:
    torch.manual_seed(1)
    opts = {"arch": "compact", "width": 8, "n_residual": 1, **kw}
    return StyleTransferModule(None, style_size=64, distill_from=str(teacher), vgg_weights=str(vgg), **opts)


def gap(module: StyleTransferModule, styles: list[int], strengths: list[float]) -> float:
    """Mean absolute difference between the student's and the teacher's outputs on fixed photos."""
    x = random_photos(len(styles), 48, 64, seed=11)
    s, w = torch.tensor(styles), torch.tensor(strengths)
    with torch.no_grad():
        target = module.teacher(x, torch.nn.functional.one_hot(s, module.n_styles).float(), w)
        return float((module(x, s, w) - target).abs().mean())


def test_student_has_the_teachers_styles_and_controls_and_learns_toward_it(tiny_trio: Path, vgg_weights: Path):
    module = student(tiny_trio, vgg_weights, lr=0.01, distill_weight=500.0)  # the pixel term leading: a quick pull
    assert module.style_names == ["a", "b", "c"] and module.hparams.strength_control
    assert module.generator.shuffle == 4 and module.generator.n_styles == 3  # the compact student
    assert not any(p.requires_grad for p in module.teacher.parameters())
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    probe = ([0, 1, 2, 1], [1.0, 1.0, 0.5, 0.2])
    before = gap(module, *probe)
    opt = module.configure_optimizers()
    module.train()
    for i in range(40):
        x = random_photos(2, 32, 32, seed=i)
        terms = module._terms(*module.with_strength_samples(x, *module.draw_conditions(2)))
        assert set(terms) == {"style", "content", "tv", "distill", "total"}
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    module.eval()
    after = gap(module, *probe)
    assert after < 0.75 * before, (before, after)  # toward the teacher's pixels, every style and strength
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher_before.items())


def test_style_targets_are_the_teachers_output_grams(tiny_trio: Path, vgg_weights: Path):
    """The style term is the Gram distance to the teacher's output on the same photo: zero for the
    teacher's own output, where the painting-based loss would not be."""
    from pipeline.train.distill import distill_terms, teacher_output

    module = student(tiny_trio, vgg_weights)
    x = random_photos(2, 40, 40, seed=3)
    target = teacher_output(module.teacher, x, torch.tensor([0, 2]), 3, torch.tensor([1.0, 0.6]))
    same = distill_terms(module.loss, target, target, x, 10.0)
    assert float(same["style"]) == 0.0 and float(same["distill"]) == 0.0
    other = distill_terms(module.loss, x, target, x, 10.0)  # the photo itself: away from the teacher's look
    assert float(other["style"]) > 0 and float(other["distill"]) > 0 and float(other["content"]) == 0.0


def test_a_single_style_teacher_without_controls(tmp_path: Path, vgg_weights: Path):
    """A teacher with one style and no strength control (an imported or plain model): so is the student."""
    teacher = make_checkpoint(tmp_path / "plain", width=8, n_residual=1)
    module = student(teacher, vgg_weights)
    assert module.n_styles == 1 and not module.hparams.strength_control and not module.generator.conditioned
    terms = module._terms(random_photos(2, 32, 32))
    assert torch.isfinite(terms["total"])


@pytest.mark.parametrize("kw, message", [
    ({"style_image": "skimage:brick"}, "a student learns the teacher's styles"),
    ({"strength_control": False}, "contradicts TEACHER=.* which has it"),
    ({"init_from": "starter"}, "cannot start FROM another model"),
])
def test_options_contradicting_the_teacher(kw, message, tiny_trio: Path, vgg_weights: Path):
    style = kw.pop("style_image", None)
    with pytest.raises(ValueError, match=message):
        StyleTransferModule(style, distill_from=str(tiny_trio), vgg_weights=str(vgg_weights), **kw)


def test_a_teacher_that_does_not_exist(tmp_path: Path, vgg_weights: Path):
    with pytest.raises(FileNotFoundError, match="TEACHER=no-such-model: .* neither a file nor a packaged model .*nor is it a run folder"):
        StyleTransferModule(None, distill_from="no-such-model", vgg_weights=str(vgg_weights))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="TEACHER=.*has no checkpoints/last.ckpt"):
        StyleTransferModule(None, distill_from=str(tmp_path / "empty"), vgg_weights=str(vgg_weights))
    with pytest.raises(ValueError, match="--model.style_image is required"):
        StyleTransferModule(None, vgg_weights=str(vgg_weights))


def test_make_distill_usage_and_a_missing_teacher(tmp_path: Path):
    make = ["make", "-s", "-f", str(ROOT / "Makefile"), "PY=" + sys.executable]
    res = subprocess.run(make + ["distill"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2 and "usage: make distill NAME=<teacher" in res.stdout
    res = subprocess.run(make + ["distill", "NAME=nothing-here"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode != 0 and "TEACHER=nothing-here: " in res.stderr and "nor is it a run folder" in res.stderr
    assert not (tmp_path / "runs" / "nothing-here-fast" / "checkpoints").exists()  # nothing written


@pytest.mark.slow
def test_make_distill_of_a_run_then_export_and_stylize(tmp_path: Path, shards: Path, tiny_trio: Path, vgg_weights: Path):
    """`make distill NAME=<run>` (the cpu preset with the distill overlay, a few steps): a compact student
    named <run>-fast with the teacher's styles, exported and stylized by style name and strength."""
    shutil.copytree(shards / "shards", tmp_path / "shards")
    teacher = tmp_path / "runs" / "trio"
    shutil.copytree(tiny_trio.parents[1], teacher)
    tiny = fit_cmd(tmp_path, Path("unused"))[4:]  # the TINY options and the run's folders, without the style
    tiny = [a for a in tiny if not a.startswith(("--model.style_image", "--trainer.logger.init_args.name", "--data.data_dir"))]
    make = ["make", "-s", "-f", str(ROOT / "Makefile"), "PY=" + sys.executable, "distill", "NAME=runs/trio",
            "DATA=shards", "ARGS=" + " ".join(tiny[2:] + ["--trainer.max_steps=3", "--data.steps_per_epoch=3",
                                                          "--model.width=8", "--model.n_residual=1"])]
    env = {**os.environ, "VGG_WEIGHTS": str(vgg_weights)}  # run from another folder, as a user's project is
    res = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "trio-fast"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["styles"] == ["a", "b", "c"] and ckpt["hyper_parameters"]["arch"] == "compact"
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])  # the teacher is not saved with it
    py = [sys.executable, "-m", "pipeline"]
    subprocess.run(py + ["export", "--run", str(run), "--formats", "[pt2]"], cwd=ROOT, check=True, capture_output=True)
    from PIL import Image
    photo = tmp_path / "photo.png"
    Image.fromarray((random_photos(1, 50, 70)[0].permute(1, 2, 0) * 255).byte().numpy()).save(photo)
    out = tmp_path / "out.png"
    res = subprocess.run(py + ["stylize", "--model", str(run / "export" / "generator.pt2"), str(photo), str(out),
                               "--style", "b", "--strength", "0.5"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Image.open(out).size == (70, 50)


def test_a_painting_is_added_to_the_committed_twin(vgg_weights: Path):
    """`make train STYLE=… FROM=starter-fast`: the compact twin takes a ninth style as the starter does, its
    eight kept (the error for STYLE with a distillation says to do this)."""
    module = StyleTransferModule("skimage:brick", style_size=64, init_from="starter-fast", learn="new_styles",
                                 vgg_weights=str(vgg_weights))
    assert module.generator.shuffle == 4 and module.first_new == 8 and module.style_names[-1] == "brick"
    x = random_photos(2, 32, 32)
    with torch.no_grad():
        kept = module.generator(x, torch.nn.functional.one_hot(torch.tensor([2, 5]), 9).float(), torch.ones(2))
        teacher = module.teacher(x, torch.nn.functional.one_hot(torch.tensor([2, 5]), 8).float(), torch.ones(2))
    assert torch.equal(kept, teacher)
