"""`pipeline/quality/style_report.py` (tables, timing, losses of a conditioned model) and the Gatys baseline
(`pipeline/quality/gatys.py`) on 32 px images with the real VGG-16."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.quality import gatys, style_report
from pipeline.serve.controls import Conditioning
from pipeline.tools.models import load_model
from serving_helpers import encode_pil, rng_image
from tool_helpers import small_loss, table_rows, tables_are_rectangular

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


@pytest.fixture(scope="module")
def loss(vgg_weights: Path) -> Any:
    return small_loss(vgg_weights)


# ---- pipeline/quality/style_report.py ------------------------------------------------------------

def _report() -> dict[str, Any]:
    return {"styles": ["a", "b"], "photos": 2, "size": 32, "steps": 100,
            "per_style": [{"style": "a", "multi": {"style": 1.0, "content": 2.0, "total": 3.5},
                           "single": {"style": 0.5, "content": 1.5, "total": 2.25}},
                          {"style": "b", "multi": {"style": 0.125, "content": 0.25, "total": 0.375},
                           "single": {"style": 1.0, "content": 1.0, "total": 2.0}}],
            "strength": {"multi (2 styles)": [{"strength": 0.0, "style": 4.0, "content": 0.0, "total": 4.0},
                                              {"strength": 1.0, "style": 1.0, "content": 2.0, "total": 3.0}]},
            "default_vs_plain": {"style": "a", "with_control": {"style": 2.0, "content": 1.0, "total": 3.0},
                                 "without_control": {"style": 1.6, "content": 1.25, "total": 3.0}},
            "ms_per_image": {"2 styles + strength": 12.3, "1 style (a)": 11.0},
            "sampling": [{"step": 10, "sample/total": 1.0, "batch/total": 2.0, "sample/a/total": 0.5,
                          "batch/a/total": 0.75, "sample/b/total": 1.5, "batch/b/total": 3.25}]}


def test_style_report_markdown_tables(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The report's tables: per-style losses, the strength sweep, with/without control as a signed
    percentage of the plain model, ms per image and the sampling curves; optional sections only when
    present; write_report writes the JSON and the markdown and prints it."""
    r = _report()
    text = style_report.markdown(r)
    assert text.startswith("# 2 styles in one model vs one model per style\n") and tables_are_rectangular(text)
    rows = table_rows(text)
    assert ["a", "1.000", "0.500", "2.000", "1.500", "3.500", "2.250"] in rows
    assert ["b", "0.125", "1.000", "0.250", "1.000", "0.375", "2.000"] in rows
    assert ["0.0", "4.000", "0.000", "4.000"] in rows and "Strength sweep, multi (2 styles)" in text
    assert ["style", "2.000", "1.600", "+25.0 %"] in rows and ["content", "1.000", "1.250", "-20.0 %"] in rows
    assert ["total", "3.000", "3.000", "+0.0 %"] in rows
    assert ["2 styles + strength", "12.3"] in rows and f"ms per {style_report.TIMING_SIZE}² image" in text
    assert ["10", "1.000", "2.000", "0.500 / 0.750", "1.500 / 3.250"] in rows
    short = {k: v for k, v in r.items() if k not in ("default_vs_plain", "sampling")}
    brief = style_report.markdown(short)
    assert "Default strength" not in brief and "per sample" not in brief and tables_are_rectangular(brief)
    style_report.write_report(tmp_path / "out", r, text)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == r
    assert (tmp_path / "out" / "report.md").read_text() == text and text in capsys.readouterr().out


def test_sampling_table_pairs_the_common_validation_steps(tmp_path: Path) -> None:
    """val_curve maps step+1 → value of a logged scalar (error if not logged); sampling_table keeps
    the steps both runs reached, with the mean and per-style validation totals of each."""
    from torch.utils.tensorboard import SummaryWriter

    def log(run: Path, steps: list[int], scale: float) -> None:
        writer = SummaryWriter(str(run))
        for s in steps:
            writer.add_scalar("val/total", scale * s, s)
            writer.add_scalar("val/a/total", scale * s + 0.5, s)
            writer.add_scalar("val/b/total", scale * s + 0.25, s)
        writer.close()

    log(tmp_path / "sample", [9, 19, 29], 1.0)
    log(tmp_path / "batch", [19, 29, 39], 2.0)
    assert style_report.val_curve(tmp_path / "sample") == {10: 9.0, 20: 19.0, 30: 29.0}
    with pytest.raises(ValueError, match="logged no val/c/total"):
        style_report.val_curve(tmp_path / "sample", "val/c/total")
    table = style_report.sampling_table(tmp_path / "sample", tmp_path / "batch", ["a", "b"])
    assert table == [{"step": 20, "sample/total": 19.0, "sample/a/total": 19.5, "sample/b/total": 19.25,
                      "batch/total": 38.0, "batch/a/total": 38.5, "batch/b/total": 38.25},
                     {"step": 30, "sample/total": 29.0, "sample/a/total": 29.5, "sample/b/total": 29.25,
                      "batch/total": 58.0, "batch/a/total": 58.5, "batch/b/total": 58.25}]


def test_ms_per_image_times_every_model() -> None:
    """ms_per_image: one median per model, rounded to 0.1 ms; a model that sleeps 20 ms per call
    measures ≥ 20 ms and more than a trivial one."""
    class Sleepy(nn.Module):
        instyle_controls = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.02)
            return x

    class Quick(nn.Module):
        instyle_controls = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, :1, :1]

    ms = style_report.ms_per_image({"sleepy": Sleepy(), "quick": Quick()}, rounds=3)
    assert list(ms) == ["sleepy", "quick"] and all(round(v, 1) == v for v in ms.values())
    assert ms["sleepy"] >= 20.0 and ms["quick"] < ms["sleepy"]


def test_losses_are_the_mean_loss_terms_of_the_conditioned_model(tiny_trio: Path, tiny_trio_generator: nn.Module, loss: Any) -> None:
    """losses(): the mean over photos of the weighted loss terms of the model run with one style and
    strength, against a direct call of the checkpoint's generator with explicit style weights."""
    model, _ = load_model(tiny_trio)
    photos = [torch.from_numpy(rng_image(32, 40, seed=s)).permute(2, 0, 1).float()[None] / 255 for s in (1, 2)]
    cond = style_report.one_hot(1, 3, 0.25)
    assert cond == Conditioning((0.0, 1.0, 0.0), 0.25)
    got = style_report.losses(model, loss, photos, 0, cond)
    with torch.no_grad():
        terms = [loss(tiny_trio_generator(x, torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0.25])).clamp(0, 1), x) for x in photos]
    assert set(got) == {"style", "content", "tv", "total"}
    for k in got:
        assert got[k] == pytest.approx(sum(t[k].item() for t in terms) / 2, rel=1e-4)


def test_style_report_uses_an_existing_export_and_reports_missing_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """exported(): an existing generator.pt2 is used as is (no checkpoint needed); a run with neither
    export nor checkpoint makes the command exit 2 with the reason."""
    existing = tmp_path / "done" / "export" / "generator.pt2"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"placeholder")
    assert style_report.exported(tmp_path / "done") == existing and existing.read_bytes() == b"placeholder"
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.png").write_bytes(encode_pil(rng_image(20, 20)))
    assert style_report.command(multi=tmp_path / "empty", singles=[], content=photos, out=tmp_path / "out") == 2
    assert "checkpoint" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ---- pipeline/quality/gatys.py -------------------------------------------------------------------

def test_build_loss_takes_only_the_loss_hyper_parameters(loss: Any) -> None:
    """build_loss: the model's loss weights where given, the training defaults elsewhere; other
    hyper-parameters (lr) are ignored."""
    from pipeline.loss.losses import LOSS_DEFAULTS

    assert loss.weights == {"style": 1e-4, "content": 2e-5, "tv": LOSS_DEFAULTS["tv_weight"]}
    assert loss.content_layer == LOSS_DEFAULTS["content_layer"] and loss.style_layers == LOSS_DEFAULTS["style_layers"]
    assert not loss.training


def test_gatys_iterations_lower_the_loss(loss: Any) -> None:
    """L-BFGS and Adam from a 32×32 photo: records at the asked iteration counts, totals below the
    photo's own loss and falling, elapsed time non-decreasing, images in [0, 1]; the photo untouched."""
    content = (torch.from_numpy(rng_image(32, 32, seed=5)).permute(2, 0, 1).float()[None] / 255).contiguous()
    before = content.clone()
    with torch.no_grad():
        start = loss(content, content)["total"].item()
    records = gatys.optimize(loss, content, [2, 1])  # any order: recorded in increasing order
    assert [r["iters"] for r in records] == [1, 2] and torch.equal(content, before)
    assert start > records[0]["total"] > records[1]["total"]
    assert 0 < records[0]["seconds"] <= records[1]["seconds"]
    for r in records:
        assert r["image"].shape == content.shape and 0 <= r["image"].min() <= r["image"].max() <= 1
        assert r["total"] == pytest.approx(r["style"] + r["content"] + r["tv"], rel=1e-5)
    adam = gatys.optimize(loss, content, [1], optimizer="adam", lr=0.05)
    assert adam[0]["total"] < start and not any(p.requires_grad for p in loss.parameters())


def test_gatys_accepts_a_channels_last_photo(loss: Any) -> None:
    """A (1, 3, H, W) photo made from an (H, W, 3) array without a copy optimizes like its contiguous copy."""
    content = torch.from_numpy(rng_image(32, 32, seed=5)).permute(2, 0, 1).float()[None] / 255
    assert not content.is_contiguous()
    records = gatys.optimize(loss, content, [1])
    assert records[0]["total"] == pytest.approx(gatys.optimize(loss, content.contiguous(), [1])[0]["total"], rel=1e-4)


def test_gatys_rejects_bad_iterations_optimizer_and_files(loss: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """optimize: no or non-positive iteration counts, or an unknown optimizer, are ValueErrors; the
    command exits 2 naming a missing style or content image."""
    x = torch.rand(1, 3, 32, 32)
    for bad in ([], [0, 5], [-1]):
        with pytest.raises(ValueError, match="positive iteration counts"):
            gatys.optimize(loss, x, bad)
    with pytest.raises(ValueError, match="choose lbfgs or adam"):
        gatys.optimize(loss, x, [1], optimizer="sgd")
    assert gatys.command(style=str(tmp_path / "none.jpg"), content="skimage:coffee") == 2
    assert gatys.command(style="skimage:coffee", content="skimage:no_such_photo") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'none.jpg'} does not exist" in err and "skimage:no_such_photo does not exist" in err


def test_gatys_command_prints_json_lines_and_writes_the_image(vgg_weights: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """The command: one JSON line per iteration count (loss terms and seconds, no image), falling
    totals, and the last image as a PNG of the resized photo's size (astronaut 512² at size 32)."""
    out = tmp_path / "sub" / "g.png"
    assert gatys.command(style="skimage:coffee", content="skimage:astronaut", iters=[2, 1], size=32, style_size=32,
                         out=out) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["iters"] for r in lines] == [1, 2] and all(set(r) == {"iters", "seconds", "style", "content", "tv", "total"}
                                                        for r in lines)
    assert lines[1]["total"] < lines[0]["total"]
    assert Image.open(out).size == (32, 32) and Image.open(out).format == "PNG"
