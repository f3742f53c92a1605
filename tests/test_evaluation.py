"""Metric functions against known answers; smoke runs of evaluate and gatys on tiny inputs with
the real VGG weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.quality.evaluate import evaluate
from pipeline.__main__ import main as cli
from pipeline.quality.gatys import optimize
from pipeline.loss.losses import build_loss
from pipeline.model.generators import build_generator
from pipeline.quality.metrics import border_artifact_index, edge_energy_ratio, laplacian_energy, psnr
from pipeline.common.image_sources import image_files, load_style


def test_psnr_known_values():
    """A constant offset d on [0, peak] is 20·log10(peak / d) dB; half the pixels off by d is 3.01 dB
    more; any float dtype, a tensor that requires grad; inf for equal images."""
    a = torch.zeros(1, 3, 8, 8)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01 → 10·log10(1/0.01)
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    assert psnr(a * 255, a + 2.55, peak=255) == pytest.approx(40.0)
    half = a.clone()
    half[..., :4] = 0.1  # MSE 0.005
    assert psnr(half, a) == pytest.approx(10 * math.log10(1 / 0.005))
    assert psnr((a + 0.25).half().requires_grad_(), a.half()) == pytest.approx(20 * math.log10(4))
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, torch.zeros(1, 3, 8, 9))


def test_laplacian_energy_known_values():
    assert laplacian_energy(torch.full((3, 9, 9), 0.7)).abs().max() == 0  # flat
    yy, xx = torch.meshgrid(torch.arange(9.0, dtype=torch.float64), torch.arange(9.0, dtype=torch.float64), indexing="ij")
    assert laplacian_energy(torch.stack([0.1 * xx + 0.05 * yy] * 3)).abs().max() < 1e-12  # linear ramp
    impulse = torch.zeros(3, 7, 7)
    impulse[:, 3, 3] = 1.0
    e = laplacian_energy(impulse)  # (5, 5); the impulse sits at (2, 2)
    assert e[2, 2] == 4 and e[1, 2] == e[2, 1] == e[3, 2] == e[2, 3] == 1 and e.sum() == 8


def checkerboard(n: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return ((xx + yy) % 2).float().expand(3, n, n)


def test_edge_energy_ratio_and_border_index():
    board = checkerboard(50)
    assert edge_energy_ratio(board, band=8) == pytest.approx(1.0)  # |Laplacian| = 4 everywhere
    framed = board.clone()
    framed[:, 6:-6, 6:-6] = 0.5  # texture only in a 6-px frame: all of its Laplacian falls in the 8-px band
    assert edge_energy_ratio(framed, band=8) > 10
    assert border_artifact_index(framed, framed, band=8) == pytest.approx(1.0)
    assert border_artifact_index(framed, board, band=8) > 10
    with pytest.raises(ValueError, match="too small"):
        edge_energy_ratio(torch.zeros(3, 20, 20), band=16)


@pytest.fixture(scope="module")
def loss(style_image, vgg_weights):
    return build_loss(load_style(style_image, 64))


@pytest.mark.slow
def test_gatys_lowers_the_loss_and_records_checkpoints(loss, tmp_path, style_image, capsys):
    torch.manual_seed(0)
    content = torch.rand(1, 3, 40, 48)
    records = optimize(loss, content, [1, 6])
    assert [r["iters"] for r in records] == [1, 6]
    assert records[1]["total"] < records[0]["total"] and records[1]["seconds"] >= records[0]["seconds"] > 0
    assert records[1]["image"].shape == content.shape and 0 <= records[1]["image"].min() <= records[1]["image"].max() <= 1
    with pytest.raises(ValueError):
        optimize(loss, content, [0])
    photo = tmp_path / "p.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(photo)
    assert cli(["gatys", "--style", str(style_image), "--content", str(photo), "--iters", "[1,2]", "--size", "32",
                       "--style_size", "64", "--out", str(tmp_path / "g.png")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["iters"] for r in lines] == [1, 2] and Image.open(tmp_path / "g.png").size == (40, 32)


@pytest.mark.slow
def test_evaluate_writes_metrics_and_report(loss, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray((rng.random((50 + 7 * i, 64, 3)) * 255).astype(np.uint8)).save(photos / f"img{i}.png")
    (photos / "notes.txt").write_text("ignored")
    torch.manual_seed(0)
    instance = build_generator("residual", norm="instance").eval()
    evaluate(instance, loss, image_files(photos), size=48, out=tmp_path / "out", gatys=1, gatys_iters=[1, 2])
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [r["image"] for r in saved["images"]] == ["img0.png", "img1.png"]  # one row per photo, not notes.txt
    keys = ("style", "content", "tv", "total", "seconds", "contrast_psnr_db", "border_index")
    for k in keys:  # the mean is the plain arithmetic mean of the per-image rows
        assert saved["mean"][k] == pytest.approx(sum(r[k] for r in saved["images"]) / 2, rel=1e-9, abs=1e-12)
    for r, h in zip(saved["images"], (50, 57)):  # the 64-px-wide photos at short side 48, aspect ratio kept
        assert r["height"] == 48 and abs(r["width"] - 64 * 48 / h) <= 1
        # Recompute the row independently: the model on the resized photo, the loss terms, and the
        # contrast PSNR of g(x) vs g(0.5x + 0.25) by hand (10·log10(1 / MSE)).
        x = torch.nn.functional.interpolate(
            torch.from_numpy(np.asarray(Image.open(photos / r["image"]), dtype=np.float32) / 255).permute(2, 0, 1)[None],
            size=(r["height"], r["width"]), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            y, y_low = instance(x).clamp(0, 1), instance(0.5 * x + 0.25).clamp(0, 1)
            terms = loss(y, x)
        assert r["total"] == pytest.approx(terms["total"].item(), rel=1e-3)
        assert r["style"] == pytest.approx(terms["style"].item(), rel=1e-3)
        mse = ((y.double() - y_low.double()) ** 2).mean().item()
        assert r["contrast_psnr_db"] == pytest.approx(10 * math.log10(1 / mse), abs=0.011)  # saved rounded to 0.01
        # The saved stylized image is this output (JPEG q88 of a noisy image: ~27 dB), not the photo.
        saved_y = np.asarray(Image.open(tmp_path / "out/images" / f"{r['image'][:-4]}-model.jpg"), dtype=np.float64) / 255
        assert saved_y.shape == (r["height"], r["width"], 3)
        err = ((saved_y - y[0].permute(1, 2, 0).double().numpy()) ** 2).mean()
        err_content = ((saved_y - x[0].permute(1, 2, 0).double().numpy()) ** 2).mean()
        assert 10 * math.log10(1 / err) > 24 and err_content > 4 * err
    row = saved["images"][0]
    assert row["contrast_psnr_db"] > 40  # instance norm: contrast does not matter
    assert [g["iters"] for g in row["gatys"]] == [1, 2] and "gatys" not in saved["images"][1]
    assert saved["gatys_mean"][0]["iters"] == 1 and saved["gatys_mean"][0]["speed_ratio_gatys_over_model"] > 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<img") == 2 * 2 + 2 and "img0-gatys2.jpg" in page
    assert all((tmp_path / "out" / "images" / f"img0-{s}.jpg").exists() for s in ("content", "model", "gatys1"))
    batch = build_generator("residual", norm="batch").eval()  # the paper's baseline is not contrast invariant
    with torch.no_grad():
        for m in batch.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    bn = evaluate(batch, loss, image_files(photos), size=48, out=tmp_path / "bn")
    assert bn["mean"]["contrast_psnr_db"] < row["contrast_psnr_db"] - 10


@pytest.mark.slow
def test_ablation_reuses_finished_runs_and_writes_the_report(tmp_path, style_image, vgg_weights, capsys):
    """The report half of `make ablation` on five tiny, already 'trained' runs (reused, not retrained)."""
    from pipeline.quality.ablation import VARIANTS, run_name
    from serving_helpers import make_checkpoint

    for i, v in enumerate(VARIANTS):
        make_checkpoint(tmp_path / "runs" / run_name(style_image, v), seed=i, global_step=3, arch=v.arch,
                        norm=v.norm, padding=v.padding, style_size=64)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((np.random.default_rng(2).random((60, 70, 3)) * 255).astype(np.uint8)).save(photos / "a.png")
    out = tmp_path / "report"
    assert cli(["ablation", "--style", str(style_image), "--steps", "3", "--runs", str(tmp_path / "runs"),
                          "--content", str(photos), "--out", str(out), "--eval_size", "48", "--limit", "1",
                          "--gatys_iters", "[1,2]"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing (step 3)") == 5 and "]: training" not in printed
    report = json.loads((out / "metrics.json").read_text())
    assert [r["key"] for r in report["variants"]] == [v.key for v in VARIANTS]
    assert [g["iters"] for g in report["gatys"]] == [1, 2]
    table = (out / "table.md").read_text()
    assert table.count("\n| residual") == 3 and table.count("\n| multiscale") == 2 and "Gatys" in table
    for fig in ("fig3_padding", "fig5_norms", "fig6_resolution"):
        assert (out / f"{fig}.jpg").exists() and fig in report["figures"]
