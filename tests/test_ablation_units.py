"""The ablation (`pipeline/quality/ablation.py`) and its report, without training: the variants, the fit
commands it would run, reuse of finished runs, tables, figures, and one variant's report against a direct evaluation."""
from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.common.image_sources import skimage_photo
from pipeline.model.checkpoint import generator_from_checkpoint, read_checkpoint
from pipeline.model.generators import build_generator
from pipeline.quality import ablation, ablation_report
from serving_helpers import encode_pil, make_checkpoint, rng_image
from tool_helpers import LOSS_HP, small_loss, table_rows, tables_are_rectangular

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


@pytest.fixture(scope="module")
def loss(vgg_weights: Path) -> Any:
    return small_loss(vgg_weights)


# ---- pipeline/quality/ablation.py ----------------------------------------------------------------

def test_ablation_variants_are_the_papers_five_and_buildable() -> None:
    """Residual × {IN, BN}, multi-scale × {IN, BN}, residual IN with zero padding; unique keys; every
    variant's (arch, norm, padding) builds a generator; run names use the style's stem or skimage name."""
    combos = {(v.arch, v.norm, v.padding) for v in ablation.VARIANTS}
    assert combos == {("residual", "instance", "reflect"), ("residual", "batch", "reflect"),
                      ("multiscale", "instance", "reflect"), ("multiscale", "batch", "reflect"),
                      ("residual", "instance", "zero")}
    assert len({v.key for v in ablation.VARIANTS}) == 5
    for v in ablation.VARIANTS:
        assert isinstance(build_generator(v.arch, norm=v.norm, padding=v.padding), nn.Module)
        assert v.label == f"{v.arch} / {v.norm} norm / {v.padding} padding"
    res_in = ablation.VARIANTS[0]
    assert ablation.run_name("skimage:coffee", res_in) == f"ablation-coffee-{res_in.key}"
    assert ablation.run_name(Path("/x/styles/starry_night.jpg"), res_in) == f"ablation-starry_night-{res_in.key}"


def test_finished_step_reads_global_step_or_minus_one(tmp_path: Path) -> None:
    """finished_step: the checkpoint's global_step; -1 for a missing, unreadable or step-less file."""
    assert ablation.finished_step(make_checkpoint(tmp_path / "r", global_step=17, width=8, n_residual=1)) == 17
    assert ablation.finished_step(tmp_path / "missing.ckpt") == -1
    (tmp_path / "broken.ckpt").write_bytes(b"\x00not a checkpoint")
    assert ablation.finished_step(tmp_path / "broken.ckpt") == -1
    torch.save({"state_dict": {}}, tmp_path / "nostep.ckpt")
    assert ablation.finished_step(tmp_path / "nostep.ckpt") == -1


def _fake_ckpt(runs: Path, variant: ablation.Variant, step: int, style: str = "skimage:coffee") -> Path:
    path = runs / ablation.run_name(style, variant) / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    return path


def test_train_variant_fit_command_resume_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """The `fit` command a variant would run (the trainer subprocess is only recorded): every
    --model.* option is a parameter of the LightningModule, the variant's arch/norm/padding, no
    strength path, the step budget, the run's logger folder, --ckpt_path only to resume a partial run,
    fit_args last; a run at the budget is reused without any command."""
    from pipeline.data.datamodule import ContentDataModule
    from pipeline.train.cli import preset_path
    from pipeline.train.module import StyleTransferModule

    calls: list[list[str]] = []

    def record(cmd: list[str], check: bool, cwd: Path) -> subprocess.CompletedProcess:
        assert check is True
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(ablation.subprocess, "run", record)
    runs = tmp_path / "runs"
    ms_bn, res_zero, res_bn = ablation.VARIANTS[3], ablation.VARIANTS[4], ablation.VARIANTS[1]
    partial = _fake_ckpt(runs, ms_bn, step=3)
    _fake_ckpt(runs, res_bn, step=9)
    assert ablation.train_variant("skimage:coffee", res_bn, None, "cpu", 9, runs) == runs / "ablation-coffee-res-bn"
    assert calls == [] and "reusing (step 9)" in capsys.readouterr().out
    ablation.train_variant("skimage:coffee", ms_bn, tmp_path / "shards", "cpu", 9, runs, ["--trainer.accelerator=gpu"])
    ablation.train_variant("skimage:coffee", res_zero, None, "gpu", 9, runs)
    assert len(calls) == 2
    module_params = set(inspect.signature(StyleTransferModule.__init__).parameters)
    data_params = set(inspect.signature(ContentDataModule.__init__).parameters)
    for cmd, v, preset in ((calls[0], ms_bn, "cpu"), (calls[1], res_zero, "gpu")):
        assert cmd[:4] == [sys.executable, "-m", "pipeline", "fit"] and cmd[4:6] == ["--config", str(preset_path(preset))]
        opts = dict(a[2:].split("=", 1) for a in cmd[6:] if a.startswith("--") and "=" in a)
        model_opts = {k.split(".", 1)[1]: val for k, val in opts.items() if k.startswith("model.")}
        assert set(model_opts) <= module_params
        assert {k.split(".", 1)[1] for k in opts if k.startswith("data.")} <= data_params
        assert (model_opts["arch"], model_opts["norm"], model_opts["padding"]) == (v.arch, v.norm, v.padding)
        assert model_opts["style_image"] == "skimage:coffee" and model_opts["strength_control"] == "false"
        assert opts["trainer.max_steps"] == "9" and opts["trainer.logger.init_args.save_dir"] == str(runs)
        assert opts["trainer.logger.init_args.name"] == ablation.run_name("skimage:coffee", v)
    assert f"--ckpt_path={partial}" in calls[0] and f"--data.data_dir={tmp_path / 'shards'}" in calls[0]
    assert calls[0][-1] == "--trainer.accelerator=gpu"  # fit_args last: they win
    assert not any(a.startswith(("--ckpt_path", "--data.data_dir")) for a in calls[1])


def test_ablation_command_checks_everything_first_and_reuses_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Bad style, steps, preset and --only are all reported in one error (exit 2) before anything
    runs; with finished runs, --train_only --only reuses just the chosen variants, in paper order."""
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the ablation tried to train")

    monkeypatch.setattr(ablation.subprocess, "run", no_training)
    runs = tmp_path / "runs"
    assert ablation.command(style=str(tmp_path / "none.jpg"), steps=0, preset="nope", only=["res-in", "xx"], runs=runs) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist; --steps must be ≥ 1; unknown preset" in err
    assert "unknown preset 'nope'" in err and "--only ['xx']: no such variant" in err
    for v in ablation.VARIANTS:
        _fake_ckpt(runs, v, step=5)
    assert ablation.command(style="skimage:coffee", steps=5, runs=runs, train_only=True, only=["ms-in", "res-bn"]) == 0
    reused = re.findall(r"\[ablation\] (\S+): reusing \(step 5\)", capsys.readouterr().out)
    assert reused == ["ablation-coffee-res-bn", "ablation-coffee-ms-in"]


# ---- pipeline/quality/ablation_report.py ---------------------------------------------------------

def test_ablation_markdown_table_formats_the_numbers() -> None:
    """One row per variant with losses to 3 decimals, minutes of training (n/a when unknown), ms per
    image, contrast PSNR and border index; the Gatys table only when there are Gatys rows."""
    mean = {"style": 1.23456, "content": 0.5, "total": 1.73456, "seconds": 0.0123, "contrast_psnr_db": 41.26,
            "border_index": 1.0049}
    rows = [{"label": "residual / instance norm / reflect padding", "steps": 800, "train_seconds": 90.0, "mean": mean},
            {"label": "multiscale / batch norm / reflect padding", "steps": 800, "train_seconds": None, "mean": mean}]
    gatys_rows = [{"iters": 50, "total": 2.5, "seconds": 12.34, "loss_ratio_model_over_gatys": 0.6666,
                   "speed_ratio_gatys_over_model": 1003.4}]
    text = ablation_report.markdown_table(rows, gatys_rows, size=256, n_photos=3)
    assert text.startswith("Evaluated on 3 validation photos, short side 256 px") and tables_are_rectangular(text)
    cells = table_rows(text)
    assert cells[1] == ["residual / instance norm / reflect padding", "800", "1.5 min", "1.235", "0.500", "1.735", "12",
                        "41.3", "1.005"]
    assert cells[2][2] == "n/a"
    assert cells[4] == ["50", "2.500", "12.3", "0.67", "1003×"]
    plain = ablation_report.markdown_table(rows, [], size=128, n_photos=1)
    assert "Gatys" not in plain and len(table_rows(plain)) == 3 and plain.endswith("|\n")


def test_train_seconds_is_the_last_logged_train_time(tmp_path: Path) -> None:
    """train_seconds: the last `train/time` scalar of the run's TensorBoard log; None when not logged."""
    from torch.utils.tensorboard import SummaryWriter

    with_time, without = tmp_path / "timed", tmp_path / "untimed"
    writer = SummaryWriter(str(with_time))
    for step, value in ((0, 1.5), (10, 20.25), (20, 61.5)):
        writer.add_scalar("train/time", value, step)
    writer.close()
    writer = SummaryWriter(str(without))
    writer.add_scalar("train/loss", 1.0, 0)
    writer.close()
    assert ablation_report.train_seconds(with_time) == 61.5
    assert ablation_report.train_seconds(without) is None


def test_ablation_figures_and_sample_photos(tmp_path: Path) -> None:
    """write_figures with only BN variants makes just the norms figure: content | each model in
    order, 224 px high; skimage_folder writes the four public-domain photos losslessly."""
    torch.manual_seed(0)
    models = {"ms-bn": build_generator("residual", width=8, n_residual=1).eval(),
              "res-bn": build_generator("residual", width=8, n_residual=1).eval()}
    figs = ablation_report.write_figures(models, tmp_path)
    assert list(figs) == ["fig5_norms"] and figs["fig5_norms"] == "content | res-bn | ms-bn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig5_norms.jpg"]
    fig = np.asarray(Image.open(tmp_path / "fig5_norms.jpg").convert("RGB"), dtype=np.float64)
    assert fig.shape == (224, 3 * 224 + 2 * 4, 3)
    photo = np.asarray(Image.fromarray(skimage_photo("astronaut")).resize((224, 224), Image.BILINEAR), dtype=np.float64)
    assert np.abs(fig[:, :224] - photo).mean() < 4  # the content panel (JPEG q85, another resize)
    x = torch.from_numpy(photo / 255).permute(2, 0, 1).float()[None].contiguous()
    with torch.no_grad():
        outs = {k: m(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 for k, m in models.items()}
    for col, key, other in ((1, "res-bn", "ms-bn"), (2, "ms-bn", "res-bn")):
        panel = fig[:, col * 228:col * 228 + 224]  # that model's output, not the other's nor the photo
        mine = np.abs(panel - outs[key]).mean()
        assert mine < 12 and mine < 0.5 * np.abs(panel - outs[other]).mean() and mine < 0.5 * np.abs(panel - photo).mean()
    folder = ablation_report.skimage_folder(tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.png" for n in ablation_report.FIGURE_PHOTOS)
    assert np.array_equal(np.asarray(Image.open(folder / "coffee.png")), skimage_photo("coffee"))


def test_ablation_report_for_one_variant_matches_a_direct_evaluation(tmp_path: Path, loss: Any,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """`ablation --only [res-bn]` with its run finished: reused, then evaluated and reported —
    metrics.json's losses equal the checkpoint's generator scored with the same loss here, table.md
    has its row, the norms figure is written (no padding / resolution figures without res-in)."""
    v = ablation.VARIANTS[1]
    ckpt = make_checkpoint(tmp_path / "runs" / ablation.run_name("skimage:coffee", v), arch=v.arch, norm=v.norm,
                           padding=v.padding, width=8, n_residual=1, global_step=5, style_image="skimage:coffee", **LOSS_HP)
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = rng_image(48, 56, seed=11)  # short side 48 = eval_size: evaluated as is
    (photos / "p.png").write_bytes(encode_pil(photo))
    assert ablation.command(style="skimage:coffee", steps=5, runs=tmp_path / "runs", content=photos,
                            out=tmp_path / "report", eval_size=48, limit=1, gatys_iters=[], only=["res-bn"]) == 0
    printed = capsys.readouterr().out
    assert "reusing (step 5)" in printed and "| residual / batch norm / reflect padding | 5 | n/a |" in printed
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["photos"] == ["p.png"] and report["gatys"] == [] and list(report["figures"]) == ["fig5_norms"]
    (row,) = report["variants"]
    assert (row["key"], row["steps"], row["train_seconds"]) == ("res-bn", 5, None)
    x = torch.from_numpy(photo).permute(2, 0, 1).float()[None].contiguous() / 255
    with torch.no_grad():
        terms = loss(generator_from_checkpoint(read_checkpoint(ckpt))(x).clamp(0, 1), x)
    for k in ("style", "content", "total"):
        assert row["mean"][k] == pytest.approx(terms[k].item(), rel=1e-3)
    assert (tmp_path / "report" / "table.md").read_text() in printed
    assert (tmp_path / "report" / "fig5_norms.jpg").is_file()
