"""pipeline/quality/figures.py: the layout every figure uses (checked pixel by pixel on flat-coloured
cells), the style grid's cells (against the generator called directly), and `python -m pipeline figures`
(the docs' figures from the committed starter model and from exported runs; missing runs named)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch import nn

from pipeline.common.image_codec import resize, to_uint8
from pipeline.quality import figures
from pipeline.quality.figures import LABEL_HEIGHT, grid, side_by_side
from pipeline.serve.model_io import load_model
from serving_helpers import make_checkpoint, rng_image
from tool_helpers import bt601_rgb, bt601_ycbcr


def flat(value: float, h: int = 10, w: int = 14) -> torch.Tensor:
    return torch.full((3, h, w), value)


def test_cells_sit_where_the_layout_says_with_white_gaps_and_no_border():
    rows = [[flat(0.0), flat(0.2), flat(0.4)], [flat(0.6), flat(0.8), flat(0.1)]]
    a = np.asarray(grid(rows, gap=3))
    assert a.shape == (2 * 10 + 3, 3 * 14 + 2 * 3, 3)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            y, x = r * 13, c * 17
            assert (a[y:y + 10, x:x + 14] == round(float(cell[0, 0, 0]) * 255)).all(), (r, c)
    assert (a[10:13] == 255).all() and (a[:, 14:17] == 255).all()  # the gaps, white


def test_titles_add_a_band_above_and_names_are_drawn_on_the_first_column():
    rows = [[flat(0.0, 40, 60), flat(0.0, 40, 60)]]
    plain = np.asarray(grid(rows))
    titled = np.asarray(grid(rows, titles=["photo", "style"], names=["a"]))
    assert titled.shape[0] == plain.shape[0] + LABEL_HEIGHT
    band = titled[:LABEL_HEIGHT]
    assert (band < 128).any() and (band[:, :60] < 128).any() and (band[:, 64:] < 128).any()  # a title over each column
    assert (titled[LABEL_HEIGHT:, :60] > 128).any()  # the name, white on the black cell
    assert (titled[LABEL_HEIGHT:, 64:] == 0).all()  # the second column untouched
    assert np.array_equal(np.asarray(side_by_side(rows[0])), plain)


def test_cells_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="one size"):
        grid([[flat(0.0), flat(0.0, 12)]])


def test_grid_rows_cells_are_the_generators_outputs(tiny_trio: Path, tiny_trio_generator: nn.Module) -> None:
    """grid_rows on a 3-style strength model: the titles; per style, the photo, strengths 0 and 0.5,
    full strength, the 50/50 mix with the next style (cyclic) — each equal to the checkpoint's
    generator called with explicit weights — and the colour-preserved cell: the full-strength luma
    with the photo's chroma (BT.601, computed here), clamped to [0, 1]."""
    model, _ = load_model(tiny_trio)
    photo = torch.from_numpy(rng_image(20, 28, seed=3)).permute(2, 0, 1).float() / 255
    titles, rows = figures.grid_rows(model, photo)
    assert titles == ["photo", "strength 0", "strength 0.5", "style (strength 1)", "50/50 mix with next", "colours preserved"]
    assert len(rows) == 3 and all(len(r) == 6 and all(c.shape == (3, 20, 28) for c in r) for r in rows)
    mixes = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]
    with torch.no_grad():
        for k, row in enumerate(rows):
            one = [1.0 if i == k else 0.0 for i in range(3)]
            assert torch.equal(row[0], photo)
            for cell, weights, s in ((row[1], one, 0.0), (row[2], one, 0.5), (row[3], one, 1.0), (row[4], mixes[k], 1.0)):
                want = tiny_trio_generator(photo[None], torch.tensor([weights]), torch.tensor([s]))[0].clamp(0, 1)
                assert (cell - want).abs().max().item() < 1e-4, (k, weights, s)
            full, kept = row[3].double().numpy(), row[5].double().numpy()
            want = bt601_rgb(np.concatenate([bt601_ycbcr(full)[:1], bt601_ycbcr(photo.double().numpy())[1:]]))
            assert np.abs(kept - want.clip(0, 1)).max() < 1e-4
            inside = ((want > 0) & (want < 1)).all(axis=0)
            assert inside.mean() > 0.5  # most pixels unclamped: there the chroma is exactly the photo's
            assert np.abs(bt601_ycbcr(kept)[1:, inside] - bt601_ycbcr(photo.double().numpy())[1:, inside]).max() < 1e-4


def test_grid_rows_of_a_plain_model_have_no_strength_columns(tmp_path: Path) -> None:
    """A single-style model without the strength control: photo | style | mix (= the style: there is
    no next style) | colours preserved; strengths asked for are not shown."""
    model, _ = load_model(make_checkpoint(tmp_path / "plain", width=8, n_residual=1))
    photo = torch.from_numpy(rng_image(16, 20, seed=4)).permute(2, 0, 1).float() / 255
    titles, rows = figures.grid_rows(model, photo, (0.0, 0.5))
    assert titles == ["photo", "style", "50/50 mix with next", "colours preserved"] and len(rows) == 1
    with torch.no_grad():
        want = model(photo[None])[0].clamp(0, 1)
    assert torch.equal(rows[0][1], rows[0][2]) and (rows[0][1] - want).abs().max().item() < 1e-6


def cells(path: Path, rows: int, cols: int, h: int, w: int) -> list[list[np.ndarray]]:
    """The cells of a titled grid figure, as float arrays in levels, after checking its size."""
    a = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert a.shape == (LABEL_HEIGHT + rows * h + (rows - 1) * 4, cols * w + (cols - 1) * 4, 3)
    return [[a[LABEL_HEIGHT + r * (h + 4):LABEL_HEIGHT + r * (h + 4) + h, c * (w + 4):c * (w + 4) + w] for c in range(cols)]
            for r in range(rows)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(20 * np.log10(255 / np.sqrt(((a - b) ** 2).mean())))


def test_figures_draws_the_starter_grid_and_names_what_runs_the_others_need(tmp_path: Path, capsys) -> None:
    """`figures` alone: the starter model's grid of chelsea, 160 px cells, a row per style of the model;
    the first column is the photo (compared with Pillow's own resize, below the row's name), strength 0
    is the photo, strength 0.5 lies between it and the style, strength 1 is far from it. The figures that
    need runs are skipped, naming their option."""
    assert figures.command(out=tmp_path / "images") == 0
    n = len(load_model("starter")[0].instyle_controls.styles)
    grid_cells = cells(tmp_path / "images" / "starter_grid.jpg", n, 6, 160, 241)  # chelsea is 451 × 300
    chelsea = np.asarray(Image.fromarray(data.chelsea()).resize((241, 160), Image.BILINEAR)).astype(float)
    for photo, s0, half, full, *_ in grid_cells:
        assert np.abs(photo[24:] - chelsea[24:]).mean() < 3  # the name is drawn on the first 24 rows
        assert psnr(s0, chelsea) > 30 and psnr(full, chelsea) < 20
        assert psnr(full, chelsea) < psnr(half, chelsea) < psnr(s0, chelsea)
    out = capsys.readouterr().out
    assert "skipped strength_grid.jpg: give --duo RUN" in out and "skipped starry_night_chelsea.jpg: give --starry_night RUN" in out
    assert "skipped widths.jpg: give --widths" in out
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["starter_grid.jpg"]


def test_a_missing_or_unexported_run_is_named_with_the_command_that_makes_it(tmp_path: Path, capsys) -> None:
    """A run that does not exist names the option, the run, and the training command of the docs; a run
    without its export names the export command; either way nothing is written."""
    out = tmp_path / "images"
    assert figures.command(out=out, duo=tmp_path / "runs" / "duo") == 2
    err = capsys.readouterr().err
    assert f"--duo {tmp_path / 'runs' / 'duo'}: no trained run there" in err and "make train STYLE=" in err and "NAME=duo" in err
    make_checkpoint(tmp_path / "runs" / "starry_night", width=8, n_residual=1)
    assert figures.command(out=out, starry_night=tmp_path / "runs" / "starry_night") == 2
    assert f"python -m pipeline export --run {tmp_path / 'runs' / 'starry_night'}" in capsys.readouterr().err
    assert figures.command(out=out, widths=[tmp_path / "runs" / "width8"]) == 2
    assert f"--widths {tmp_path / 'runs' / 'width8'}: no trained run there" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_figures_from_exported_runs(tiny_trio: Path, tiny_trio_generator: nn.Module, tmp_path: Path) -> None:
    """With both runs (a tiny 3-style model exported to .pt2 for each): the strength grid (a row per
    style, 192 px cells) and photo | stylized (256 px high): the photo scaled to 256 px, and the
    generator's first style at full strength applied to it."""
    from pipeline.export.exporter import export_run

    run = tiny_trio.parents[1]
    export_run(run, formats=("pt2",))
    out = tmp_path / "images"
    assert figures.command(out=out, duo=run, starry_night=run, widths=[run, run], added=[run]) == 0
    added = np.asarray(Image.open(out / "added_style.jpg").convert("RGB")).astype(float)
    assert added.shape[1] == 2 * 300 + 4 and added.shape[0] > 2 * 200  # photo | the run, rows chelsea and coffee
    widths = np.asarray(Image.open(out / "widths.jpg").convert("RGB")).astype(float)
    assert widths.shape == (256, 3 * 385 + 8, 3)  # photo | one column per run
    cells(out / "strength_grid.jpg", 3, 6, 192, 289)
    pair = np.asarray(Image.open(out / "starry_night_chelsea.jpg").convert("RGB")).astype(float)
    assert pair.shape == (256, 2 * 385 + 4, 3)
    x = resize(torch.from_numpy(data.chelsea()).permute(2, 0, 1).float() / 255, (256, 385))
    assert np.abs(pair[:, :385] - to_uint8(x)).mean() < 3
    with torch.no_grad():
        styled = [to_uint8(tiny_trio_generator(x[None], torch.tensor([w]), torch.ones(1))[0]).astype(float)
                  for w in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])]
    buf = io.BytesIO()
    Image.fromarray(styled[0].astype(np.uint8)).save(buf, "JPEG", quality=88)
    jpeg_loss = np.abs(np.asarray(Image.open(buf)) - styled[0]).mean()  # the random net's output is mostly fine detail
    first, second = (np.abs(pair[:, 389:] - s).mean() for s in styled)
    assert first < jpeg_loss + 1 and first < 0.7 * second
    for column in (widths[:, 389:774], widths[:, 778:]):  # the same run twice: its first style both times
        assert np.abs(column - styled[0]).mean() < jpeg_loss + 1
