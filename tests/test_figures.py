"""pipeline.quality.figures.grid: the layout every figure uses (README, style grid, ablation, flicker), checked
pixel by pixel on flat-coloured cells."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.quality.figures import LABEL_HEIGHT, grid, side_by_side


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
