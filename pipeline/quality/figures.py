"""The docs' figures, all written by one command, and the picture layout every figure uses.

    python -m pipeline figures [--duo runs/duo] [--starry_night runs/starry_night] \
        [--widths '[runs/width32,runs/width16,runs/width8]'] [--added '[runs/scratch,runs/added]']   # or: make figures ARGS=...

writes into docs/images/ (`--out`), from scikit-image's public-domain `chelsea` photo:

- `starter_grid.jpg` (models/starter/README.md): the committed `starter` model, always;
- `strength_grid.jpg` (docs/styles.md): the two-style run `duo`, when `--duo` names it;
- `starry_night_chelsea.jpg` (the README): photo | the `starry_night` run, when `--starry_night` names it;
- `widths.jpg` (docs/benchmarks.md#widths): photo | each run of `--widths` (widths 32, 16, 8), when given;
- `added_style.jpg` (docs/training.md#adding-a-style): photo | each run of `--added` (one painting from
  scratch and added to the starter), when given.

A style grid is one photo through a model, a row per style; columns: photo | strengths 0 and 0.5
(models with the strength control) | the style (strength 1) | 50/50 mix with the next style | colours
preserved. Every cell is what the server returns for the matching `X-Style`, `X-Strength`,
`X-Preserve-Color` (the same serving functions make it). `grid` and `side_by_side` also lay out the
ablation report's and the width benchmark's figures.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from pipeline.common.image_codec import resize, scaled_size, to_uint8
from pipeline.common.image_sources import load_image
from pipeline.serve.color import preserve_color
from pipeline.serve.controls import Conditioning, call_model
from pipeline.serve.model_io import load_model

LABEL_HEIGHT = 18  # px of the title band above the columns
PHOTO = "skimage:chelsea"  # every docs figure's photo: public domain, shipped with scikit-image


def grid(rows: Sequence[Sequence[torch.Tensor]], gap: int = 4, titles: Sequence[str] = (),
         names: Sequence[str] = ()) -> Image.Image:
    """Rows of (3, H, W) images in [0, 1], all of one size, as one picture with white gaps between
    (torchvision's `make_grid`); `titles` go in a band above the columns, `names` on each row's first image."""
    if len({im.shape for row in rows for im in row}) != 1 or len({len(row) for row in rows}) != 1:
        raise ValueError("a grid needs rows of equally many images, all of one size")
    cells = [im.detach().float().cpu() for row in rows for im in row]
    sheet = make_grid(cells, nrow=len(rows[0]), padding=gap, pad_value=1.0)[:, gap:-gap, gap:-gap]  # no outer border
    picture = Image.fromarray(to_uint8(sheet))
    if titles:
        banded = Image.new("RGB", (picture.width, picture.height + LABEL_HEIGHT), "white")
        banded.paste(picture, (0, LABEL_HEIGHT))
        picture = banded
    draw, (h, w) = ImageDraw.Draw(picture), rows[0][0].shape[1:]
    for i, title in enumerate(titles):
        draw.text((i * (w + gap) + 4, 3), title, fill="black")
    top = LABEL_HEIGHT if titles else 0
    for i, name in enumerate(names):
        draw.text((4, top + i * (h + gap) + 4), name, fill="white", stroke_width=2, stroke_fill="black")
    return picture


def side_by_side(images: Sequence[torch.Tensor], gap: int = 4) -> Image.Image:
    """(3, H, W) images of one size left to right, white gaps between."""
    return grid([images], gap)


def at_height(photo: torch.Tensor, height: int) -> torch.Tensor:
    """A (3, H, W) photo scaled down (never up) to `height` rows, its aspect ratio kept."""
    h, w = photo.shape[1:]
    return photo if h <= height else resize(photo, scaled_size(h, w, height, "short" if h <= w else "long"))


@torch.inference_mode()
def grid_rows(model: Any, photo: torch.Tensor, strengths: tuple[float, ...] = (0.0, 0.5)) -> tuple[list[str], list[list[torch.Tensor]]]:
    """(column titles, one row of (3, H, W) images per style); `strengths` shown before full strength
    (models without the strength control: none)."""
    controls = model.instyle_controls
    n = len(controls.styles)
    strengths = tuple(strengths) if controls.strength else ()
    titles = ["photo", *(f"strength {s:g}" for s in strengths), "style (strength 1)" if strengths else "style",
              "50/50 mix with next", "colours preserved"]
    rows = []
    for k in range(n):
        pure = tuple(1.0 if i == k else 0.0 for i in range(n))
        mix = tuple(0.5 if i in (k, (k + 1) % n) else 0.0 for i in range(n)) if n > 1 else pure
        conds = [Conditioning(pure, s) for s in strengths] + [Conditioning(pure), Conditioning(mix)]
        out = call_model(model, photo[None].expand(len(conds), -1, -1, -1).contiguous(), conds, controls).clamp(0, 1)
        rows.append([photo, *out, preserve_color(out[len(strengths)], photo)])
    return titles, rows


def style_grid(model: Any, photo: torch.Tensor, height: int) -> Image.Image:
    """The style grid of a model: cells `height` px high, a row per style, named."""
    titles, rows = grid_rows(model, at_height(photo, height))
    return grid(rows, titles=titles, names=model.instyle_controls.styles)


@torch.inference_mode()
def content_stylized(models: Sequence[Any], photo: torch.Tensor, height: int) -> Image.Image:
    """photo | each model's output (its first style, full strength, as a request without options), `height` px high."""
    x = at_height(photo, height)
    return side_by_side([x, *(call_model(m, x[None], None, m.instyle_controls)[0].clamp(0, 1) for m in models)])


@torch.inference_mode()
def added_style(runs: Sequence[tuple[str, Any]], height: int) -> Image.Image:
    """One painting learned several ways (from scratch, added to a model with FROM=): a row per photo
    (chelsea, coffee), photo | each (run name, model)'s last style (an added style comes after FROM's),
    full strength; columns titled with the run names."""
    models = [m for _, m in runs]
    rows = []
    for name in (PHOTO, "skimage:coffee"):
        x = resize(load_image(name), (height, height * 3 // 2))  # both 3:2 (to within 1 %): cells of one size
        outs = []
        for m in models:
            n = len(m.instyle_controls.styles)
            cond = Conditioning(tuple(1.0 if i == n - 1 else 0.0 for i in range(n)))
            outs.append(call_model(m, x[None], [cond], m.instyle_controls)[0].clamp(0, 1))
        rows.append([x, *outs])
    return grid(rows, titles=["photo", *(name for name, _ in runs)])


class RunFigure(NamedTuple):
    """A docs figure drawn from a trained run: its file, the option naming the run, how the docs train it."""
    file: str
    option: str
    train: str
    doc: str
    draw: Callable[[Any, torch.Tensor], Image.Image]


STARTER_GRID = "starter_grid.jpg"
ART = "../shared/assets/styles"
RUN_FIGURES = (
    RunFigure("strength_grid.jpg", "duo", f"make train STYLE={ART}/composition_vii.jpg,{ART}/shipwreck_of_the_minotaur.jpg "
              "DATA=data/shards/bsds NAME=duo", "docs/styles.md#strength", lambda m, x: style_grid(m, x, 192)),
    RunFigure("starry_night_chelsea.jpg", "starry_night", f"make train STYLE={ART}/starry_night.jpg DATA=data/shards/bsds",
              "docs/training.md#the-readme-figure", lambda m, x: content_stylized([m], x, 256)),
)
WIDTHS = RunFigure("widths.jpg", "widths", "make train STYLE=../shared/assets/styles/starry_night.jpg NAME=width16 "
                   "ARGS='--model.width=16' (and 32, 8)", "docs/benchmarks.md#widths",
                   lambda ms, x: content_stylized(ms, x, 256))


ADDED = RunFigure("added_style.jpg", "added", "make train PRESET=cpu STYLE=…/shipwreck_of_the_minotaur.jpg NAME=scratch "
                  "and make train STYLE=… FROM=starter (docs/training.md#adding-a-style)",
                  "docs/training.md#adding-a-style", lambda ms, x: added_style(ms, 200))


def exported_model(run: Path, figure: RunFigure) -> Path:
    """The run's served generator (export/generator.pt2); a missing run or export is a FileNotFoundError
    that says which command makes it."""
    path = run / "export" / "generator.pt2"
    if path.is_file():
        return path
    if not (run / "checkpoints").is_dir():
        raise FileNotFoundError(f"--{figure.option} {run}: no trained run there ({figure.file} needs one); train it "
                                f"with `{figure.train}` ({figure.doc}), then `python -m pipeline export --run {run}`")
    raise FileNotFoundError(f"--{figure.option} {run}: not exported; `python -m pipeline export --run {run}` first")


def save(fig: Image.Image, path: Path) -> None:
    fig.save(path, quality=88)
    print(f"wrote {path} ({fig.width}×{fig.height})")


def command(*, out: Path = Path("docs/images"), duo: Path | None = None, starry_night: Path | None = None,
            widths: list[Path] | None = None, added: list[Path] | None = None) -> int:
    """The docs' figures: the starter model's grid always; the strength grid, the README figure and the widths
    figure from their runs.

    Args:
        out: folder the figures are written to.
        duo: run directory of the two-style model of docs/styles.md (exported): writes strength_grid.jpg.
        starry_night: run directory of the README's Starry Night model (exported): writes starry_night_chelsea.jpg.
        widths: run directories of one style at several widths (exported), left to right: writes widths.jpg.
        added: run directories of one painting learned from scratch and added to a model (FROM=), exported,
            left to right: writes added_style.jpg (each model's last style).
    """
    given = {"duo": duo, "starry_night": starry_night}
    try:  # every run checked before anything is written
        models = {f.file: load_model(exported_model(given[f.option], f))[0] for f in RUN_FIGURES if given[f.option]}
        width_models = [load_model(exported_model(run, WIDTHS))[0] for run in widths or ()]
        added_models = [(run.name, load_model(exported_model(run, ADDED))[0]) for run in added or ()]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    photo = load_image(PHOTO)
    out.mkdir(parents=True, exist_ok=True)
    save(style_grid(load_model("starter")[0], photo, 160), out / STARTER_GRID)
    for f in RUN_FIGURES:
        if f.file in models:
            save(f.draw(models[f.file], photo), out / f.file)
        else:
            print(f"skipped {f.file}: give --{f.option} RUN (`{f.train}`, {f.doc})")
    if width_models:
        save(WIDTHS.draw(width_models, photo), out / WIDTHS.file)
    else:
        print(f"skipped {WIDTHS.file}: give --widths '[RUN,...]' (`{WIDTHS.train}`, {WIDTHS.doc})")
    if added_models:
        save(ADDED.draw(added_models, photo), out / ADDED.file)
    else:
        print(f"skipped {ADDED.file}: give --added '[RUN,...]' ({ADDED.doc})")
    return 0
