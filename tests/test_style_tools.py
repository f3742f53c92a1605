"""The evidence tools of multi-style models: `style-grid` (every cell is what the server answers for
those options) and `style-report` (its losses against an independent computation)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.export.exporter import export_run
from pipeline.quality import figures, style_grid
from pipeline.quality.style_report import STRENGTHS, build_report, markdown
from pipeline.common.image_codec import resize_short
from pipeline.common.image_sources import load_style
from pipeline.serve.model_io import load_model
from pipeline.tools.stylize import stylize_bytes
from pipeline.quality.gatys import build_loss
from serving_helpers import decode_pil, encode_pil, make_checkpoint, rng_image

STYLES = ["astronaut", "coffee", "chelsea"]  # images scikit-image ships


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    small = {"width": 8, "n_residual": 1, "style_size": 64}
    made = {"trio": make_checkpoint(root / "trio", styles=STYLES, strength=True,
                                    style_image=",".join(f"skimage:{n}" for n in STYLES), **small).parents[1]}
    for i, name in enumerate(STYLES):
        made[name] = make_checkpoint(root / name, seed=i + 1, strength=True, style_image=f"skimage:{name}", **small).parents[1]
    for run in made.values():
        export_run(run, formats=("pt2",))
    return made


@pytest.mark.slow
def test_grid_cells_are_the_servers_answers(runs, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_pil(rng_image(40, 56, seed=9)))
    model_path = runs["trio"] / "export" / "generator.pt2"
    out = tmp_path / "grid.png"
    assert style_grid.command(model=model_path, out=out, photo=str(photo), height=40, strengths=[0.0, 0.3]) == 0
    grid = np.asarray(Image.open(out).convert("RGB"))
    model, _ = load_model(model_path)
    data = photo.read_bytes()
    for row, name in enumerate(STYLES):
        nxt = STYLES[(row + 1) % 3]
        for col, params in enumerate([{"style": name, "strength": "0"}, {"style": name, "strength": "0.3"}, {"style": name},
                                      {"style": f"{name}:0.5,{nxt}:0.5"}, {"style": name, "preserve_color": "true"}],
                                     start=1):
            y0, x0 = figures.LABEL_HEIGHT + row * (40 + 4), col * (56 + 4)
            cell = grid[y0:y0 + 40, x0:x0 + 56]
            want = np.asarray(decode_pil(stylize_bytes(model, data, params)[0]))
            if col == 1 and row > 0 or col > 1:  # the label is drawn on the photo column only
                assert np.abs(cell.astype(int) - want.astype(int)).max() <= 1, (name, params)
            if col == 1:  # strength 0 is the photo (JPEG-free PNG: within a level or two)
                assert np.abs(cell.astype(int) - np.asarray(decode_pil(data)).astype(int)).max() <= 2


@pytest.mark.slow
def test_report_losses_against_an_independent_computation(runs, tmp_path, vgg_weights):
    content = tmp_path / "photos"
    content.mkdir()
    for i in range(2):
        (content / f"p{i}.png").write_bytes(encode_pil(rng_image(48, 64, seed=30 + i)))
    singles = [runs[n] for n in STYLES]
    report = build_report(runs["trio"], singles, None, content, size=48, limit=2, per_batch=None)
    assert [p["style"] for p in report["per_style"]] == STYLES
    # the single coffee model's style loss, recomputed with a loss built for that style alone
    model, meta = load_model(runs["coffee"] / "export" / "generator.pt2")
    loss = build_loss(load_style("skimage:coffee", 64), meta["hyper_parameters"])
    values = []
    with torch.inference_mode():
        for p in sorted(content.iterdir()):
            x = resize_short(torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1).float()[None] / 255, 48)
            values.append(loss(model(x, torch.ones(1, 1), torch.ones(1)).clamp(0, 1), x)["style"].item())
    assert report["per_style"][1]["single"]["style"] == pytest.approx(sum(values) / 2, rel=1e-4)
    assert [row["strength"] for row in report["strength"]["multi (3 styles)"]] == list(STRENGTHS)
    assert set(report["ms_per_image"]) == {"3 styles + strength", *[f"1 style ({n})" for n in STYLES]}
    text = markdown(report)
    assert "| coffee |" in text and "Strength sweep, multi (3 styles)" in text
