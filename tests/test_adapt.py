"""Adding styles to a trained model (`--model.init_from`, `make train FROM=…`): what learns, what is kept
bit for bit, and the errors. The real chain (a fit FROM a run, export, stylize, eval) is the slow test at
the end."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.adapt import kept_drift, replay_loss
from pipeline.train.module import StyleTransferModule
from serving_helpers import make_checkpoint
from train_helpers import fit, fit_cmd, random_photos

ROOT = Path(__file__).resolve().parents[1]


def adapted(style: Path | str, base: Path, vgg: Path, **kw) -> StyleTransferModule:
    torch.manual_seed(1)
    return StyleTransferModule(str(style), style_size=64, init_from=str(base), vgg_weights=str(vgg), **kw)


def steps(module: StyleTransferModule, n: int = 3) -> None:
    """`n` optimizer steps of the module's own loss on random photos, as training takes them."""
    opt = module.configure_optimizers()
    module.train()
    for i in range(n):
        x = random_photos(2, 32, 32, seed=i)
        styles, strength = module.draw_conditions(2)
        terms = module._terms(*module.with_strength_samples(x, styles, strength))
        if module.replays:
            terms["total"] = terms["total"] + module.hparams.replay_weight * replay_loss(
                module.generator, module.teacher, x, module.first_new, strength)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    module.eval()


def outputs(generator: torch.nn.Module, n_styles: int, weights: list[float], strength: float) -> torch.Tensor:
    x = random_photos(2, 40, 56, seed=7)
    w = torch.tensor(weights + [0.0] * (n_styles - len(weights))).repeat(2, 1)
    with torch.no_grad():
        return generator(x, w, torch.full((2,), strength))


def test_new_styles_learn_and_from_styles_stay_bit_identical(tiny_trio: Path, style_image: Path, vgg_weights: Path):
    module = adapted(style_image, tiny_trio, vgg_weights, learn="new_styles", lr=0.05)
    assert module.style_names == ["a", "b", "c", style_image.stem] and module.first_new == 3
    before = {k: v.clone() for k, v in module.generator.state_dict().items()}
    steps(module, 2)
    after = module.generator.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # only per-style tensors moved, and in them only the new style's row (column of the strength net)
    assert changed and all(after[k].dim() == 2 for k in changed), changed
    for k in changed:
        old = before[k][:, :3] if k == "strength_net.linear.weight" else before[k][:3]
        new = after[k][:, :3] if k == "strength_net.linear.weight" else after[k][:3]
        assert torch.equal(old, new), k
    assert torch.equal(before["strength_net.linear.weight"][:, -1], after["strength_net.linear.weight"][:, -1])
    teacher, ours = module.teacher, module.generator
    for s in (0.0, 0.4, 1.0):
        for weights in ([1.0], [0.0, 1.0], [0.0, 0.0, 1.0]):  # each of FROM's styles: bit for bit
            assert torch.equal(outputs(ours, 4, weights, s), outputs(teacher, 3, weights, s)), (weights, s)
        for weights in ([0.5, 0.5], [0.2, 0.3, 0.5]):  # mixes: the same sums, in another order (float rounding)
            assert (outputs(ours, 4, weights, s) - outputs(teacher, 3, weights, s)).abs().max() < 1e-5, (weights, s)
    assert float(kept_drift(ours, teacher, random_photos(2, 32, 32))) == 0.0
    assert not torch.equal(outputs(ours, 4, [0, 0, 0, 1.0], 1.0), outputs(teacher, 3, [1 / 3] * 3, 1.0))


def test_new_style_starts_at_the_mean_of_from_rows(tiny_trio: Path, style_image: Path, vgg_weights: Path):
    state = torch.load(tiny_trio, weights_only=True)["state_dict"]
    module = adapted(style_image, tiny_trio, vgg_weights)
    ours = module.generator.state_dict()
    rows = state["generator.res.0.layers.1.weight"] if "generator.res.0.layers.1.weight" in state else \
        next(v for k, v in state.items() if k.startswith("generator.res.") and v.dim() == 2 and "strength" not in k)
    key = next(k for k, v in state.items() if torch.equal(v, rows))[len("generator."):]
    assert torch.allclose(ours[key][3], rows.mean(0)) and torch.equal(ours[key][:3], rows)
    # a new style's strength-net column: the mean of FROM's style columns; the strength's column stays last
    lin = state["generator.strength_net.linear.weight"]
    assert torch.allclose(ours["strength_net.linear.weight"][:, 3], lin[:, :3].mean(1))
    assert torch.equal(ours["strength_net.linear.weight"][:, 4], lin[:, 3])
    # before any step, the new style is the even mix of FROM's styles, as FROM computes it
    assert torch.allclose(outputs(module.generator, 4, [0, 0, 0, 1.0], 0.7),
                          outputs(module.teacher, 3, [1 / 3] * 3, 0.7), atol=1e-5)


def test_keep_styles_false_keeps_only_the_new_ones(tiny_trio: Path, style_image: Path, vgg_weights: Path):
    module = adapted(f"{style_image},skimage:brick", tiny_trio, vgg_weights, keep_styles=False, learn="all")
    assert module.style_names == [style_image.stem, "brick"] and module.first_new == 0
    assert module.generator.n_styles == 2 and module.generator.has_strength


@pytest.mark.slow
def test_learn_all_with_replay_holds_from_styles(tiny_trio: Path, style_image: Path, vgg_weights: Path):
    free = adapted(style_image, tiny_trio, vgg_weights, learn="all", lr=0.01)
    held = adapted(style_image, tiny_trio, vgg_weights, learn="all", lr=0.01, replay_weight=1e4)
    photos = random_photos(2, 32, 32, seed=3)
    assert float(replay_loss(held.generator, held.teacher, photos, 3, None)) == 0.0  # FROM's weights at the start
    steps(free, 4)
    steps(held, 4)
    assert float(kept_drift(held.generator, held.teacher, photos)) < float(kept_drift(free.generator, free.teacher, photos))
    convs = [k for k, v in held.generator.state_dict().items() if v.dim() == 4]
    assert any(not torch.equal(held.generator.state_dict()[k], held.teacher.state_dict()[k]) for k in convs)


# ---- bad input: a clear error, nothing written

@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("pt2", "for serving"),
    ("batch", "batch norm"),
    ("plain", "one style and plain instance norm"),
    ("imported", "imported model"),
])
def test_from_that_cannot_take_styles(kind: str, message: str, tmp_path: Path, style_image: Path, vgg_weights: Path):
    if kind == "missing":
        base = tmp_path / "runs" / "nope"
    elif kind == "pt2":
        base = tmp_path / "generator.pt2"
        base.write_bytes(b"x")
    else:
        overrides = {"batch": {"norm": "batch"}, "plain": {}, "imported": {"output": "clamp"}}[kind]
        base = make_checkpoint(tmp_path / "run", **overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        adapted(style_image, base, vgg_weights)


def test_option_contradicting_from(tiny_trio: Path, style_image: Path, vgg_weights: Path):
    with pytest.raises(ValueError, match="width=16 contradicts .* width=8"):
        adapted(style_image, tiny_trio, vgg_weights, width=16)
    with pytest.raises(ValueError, match="strength_control=False contradicts"):
        adapted(style_image, tiny_trio, vgg_weights, strength_control=False)
    assert adapted(style_image, tiny_trio, vgg_weights, width=8, n_residual=1).hparams.width == 8  # agreeing: fine


def test_style_from_already_has_by_name_or_content(tmp_path: Path, style_image: Path, vgg_weights: Path):
    torch.manual_seed(0)
    base = StyleTransferModule(f"{style_image},skimage:brick", style_size=64, width=8, n_residual=1,
                               strength_control=True, vgg_weights=str(vgg_weights))
    ckpt = {"state_dict": base.state_dict(), "hyper_parameters": dict(base.hparams)}
    base.on_save_checkpoint(ckpt)
    assert len(ckpt["style_fingerprints"]) == 2
    path = tmp_path / "from.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="already has a style named 'brick'"):
        adapted("skimage:brick", path, vgg_weights)
    renamed = tmp_path / "my_painting.png"  # the same painting, another name and format
    from PIL import Image
    Image.open(style_image).convert("RGB").resize((300, 240)).save(renamed)
    with pytest.raises(ValueError, match=f"'my_painting' is the painting .* as '{style_image.stem}'"):
        adapted(renamed, path, vgg_weights)
    assert adapted("skimage:grass", path, vgg_weights).style_names[-1] == "grass"  # another painting: added


@pytest.mark.slow
def test_a_new_run_refuses_a_run_folder_with_checkpoints(tmp_path: Path, style_image: Path):
    make_checkpoint(tmp_path / "runs" / "tiny")
    before = sorted(p.name for p in (tmp_path / "runs" / "tiny").rglob("*"))
    res = subprocess.run(fit_cmd(tmp_path, style_image), cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "already holds checkpoints" in res.stderr and "CKPT=" in res.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").rglob("*")) == before


# ---- the real chain

@pytest.mark.slow
def test_make_train_from_a_run_then_export_stylize_and_eval(tmp_path: Path, shards: Path, tiny_trio: Path,
                                                            style_image: Path, vgg_weights: Path):
    """A fit FROM a 3-style run (the cpu preset, the adapt overlay as `make train FROM=` adds it), exported
    and stylized: FROM's styles give FROM's pixels, the new style is evaluated by name."""
    shutil.copytree(shards / "shards", tmp_path / "shards")
    adapt = ["--config", str(ROOT / "pipeline/train/configs/adapt.yaml"), f"--model.init_from={tiny_trio}",
             "--trainer.max_steps=3", "--data.steps_per_epoch=3"]
    fit(tmp_path, style_image, *adapt, name="grown")
    run = tmp_path / "runs" / "grown"
    py = [sys.executable, "-m", "pipeline"]
    from_run = tmp_path / "from"  # a copy: export writes into RUN/export and the fixture is shared
    shutil.copytree(tiny_trio.parents[1], from_run)
    for source in (run, from_run):
        subprocess.run(py + ["export", "--run", str(source), "--formats", "[pt]"], cwd=ROOT, check=True,
                       capture_output=True)
    photo = tmp_path / "photos" / "photo.png"
    photo.parent.mkdir()
    from PIL import Image
    Image.fromarray((random_photos(1, 64, 80)[0].permute(1, 2, 0) * 255).byte().numpy()).save(photo)
    for style, strength in (("b", "1"), ("a:0.5,c:0.5", "0.6")):
        got = []
        for model in (run / "export" / "generator.pt", from_run / "export" / "generator.pt"):
            out = tmp_path / f"{model.parents[1].name}-{style}.png"
            subprocess.run(py + ["stylize", "--model", str(model), str(photo), str(out), "--style", style,
                                 "--strength", strength], cwd=ROOT, check=True, capture_output=True)
            got.append(torch.tensor(list(Image.open(out).getdata())))
        assert torch.equal(got[0], got[1]), style
    # the new style is evaluated against its own painting (found by name: the run lists only new images)
    res = subprocess.run(py + ["evaluate", "--model", str(run / "checkpoints" / "last.ckpt"), "--content",
                               str(photo.parent), "--out", str(tmp_path / "report"), "--style_name", style_image.stem,
                               "--flicker", "0", "--curve", "0", "--size", "64"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    # FROM's styles have no painting in this run: evaluating one asks for it instead of using another's
    res = subprocess.run(py + ["evaluate", "--model", str(run / "checkpoints" / "last.ckpt"), "--content",
                               str(photo.parent), "--out", str(tmp_path / "report_a"), "--style_name", "a"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "pass --style" in res.stderr


def test_from_the_committed_starter_by_name(tmp_path: Path, vgg_weights: Path):
    """The README's `make train STYLE=my.jpg FROM=starter`: the packaged starter by name gives a 9th style,
    its 8 styles keep the starter's own pixels, and the two scikit-image images it was trained on are
    refused, by name and by content (the fingerprints its header carries)."""
    from PIL import Image
    from skimage import data

    from pipeline.serve.model_io import load_model

    module = adapted("skimage:brick", "starter", vgg_weights)
    starter, _ = load_model("starter")
    names = list(starter.instyle_controls.styles)
    assert module.style_names == names + ["brick"] and module.first_new == len(names) == 8
    x = random_photos(2, 48, 64, seed=3)
    generator = module.generator.eval()
    for k in range(len(names)):
        w = torch.zeros(2, len(names)); w[:, k] = 1
        with torch.no_grad():
            ours = generator(x, torch.cat([w, torch.zeros(2, 1)], 1), torch.full((2,), 0.7))
            served = starter(x, w, torch.full((2,), 0.7))  # the fp16 file in its serving form: float rounding apart
        assert (ours - served).abs().max() * 255 < 1, names[k]
    with pytest.raises(ValueError, match="already has a style named 'hubble_deep_field'"):
        adapted("skimage:hubble_deep_field", "starter", vgg_weights)
    copy = tmp_path / "deep_space.jpg"
    Image.fromarray(data.hubble_deep_field()).save(copy, quality=92)
    with pytest.raises(ValueError, match="'deep_space' is the painting .* as 'hubble_deep_field'"):
        adapted(copy, "starter", vgg_weights)
