"""The Gatys baseline (`pipeline/quality/gatys.py`) on 32 px images with the real VGG-16."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from pipeline.quality import gatys
from serving_helpers import rng_image
from tool_helpers import small_loss

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


@pytest.fixture(scope="module")
def loss(vgg_weights: Path) -> Any:
    return small_loss(vgg_weights)


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
