"""Tiled inference (pipeline.serve.tiling.stylize_tiled): whole-image instance-norm statistics, so the
tiled result equals the untiled one (no seams, no colour shift between tiles), for eager, .pt and
.pt2 models, through run_batch's memory cap, the CLI's --max_memory_mb and the handler's environment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.serve import inference, limits
from pipeline.model.generators import ResidualGenerator
from pipeline.common.image_codec import DecodedImage
from pipeline.serve.inference import run_batch
from pipeline.serve.tiling import stylize_tiled, tileable_generator, untiled_bytes
from pipeline.serve.model_io import load_model
from pipeline.__main__ import main as cli
from serving_helpers import decode_pil, encode_pil, rng_image, shared_export

TOL = 1e-5


@pytest.fixture(scope="module", params=["classic", "compact"])
def generator(request):
    """The full-size generator of each layout (the compact one: its body at ⅛, entry and exit by space-to-depth)."""
    torch.manual_seed(0)
    g = ResidualGenerator(layout=request.param).eval()
    with torch.no_grad():  # move the norm affines off 1/0 so every statistic matters
        for p in g.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return g


@pytest.mark.parametrize("size, tile", [((96, 96), 32), ((77, 130), 32), ((150, 61), 64), ((5, 9), 16), ((64, 64), 4096)])
def test_tiled_equals_untiled(generator, size, tile):
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(size[0]))
    with torch.inference_mode():
        ref = generator(x)
        out = stylize_tiled(generator, x, tile)
    assert out.shape == ref.shape
    diff = (out - ref).abs().max().item()
    assert diff < TOL, f"{size} in {tile}-px tiles: max abs diff {diff:.3g}"


def test_per_tile_statistics_would_show_seams(generator):
    """The naive alternative, each half run on its own (its own norm statistics), is visibly off;
    with whole-image statistics the same split is exact."""
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(7))
    x[..., 64:] = x[..., 64:] * 0.5 + 0.5  # halves of different brightness and contrast
    with torch.inference_mode():
        ref = generator(x)
        naive = torch.cat([generator(x[..., :64]), generator(x[..., 64:])], dim=-1)
        ours = stylize_tiled(generator, x, 64)
    assert (naive - ref).abs().max().item() > 0.05
    assert (ours - ref).abs().max().item() < TOL


def test_batch_is_tiled_image_by_image(generator):
    x = torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        diff = (stylize_tiled(generator, x, 32) - generator(x)).abs().max().item()
    assert diff < TOL


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pt", "pt2"])
def test_exported_models_carry_their_generator(tmp_path_factory, kind):
    run = shared_export(tmp_path_factory)
    model, _ = load_model(run / "export" / f"generator.{kind}")
    generator = tileable_generator(model)
    assert generator is not None and generator is not model
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        diff = (stylize_tiled(generator, x, 32) - model(x)).abs().max().item()
    assert diff < TOL


@pytest.mark.parametrize("kwargs", [{"padding": "zero"}, {"norm": "batch"}, {"upsample": "transposed"}, {"norm": "none"},
                                    {"layout": "compact", "padding": "zero"}])
def test_other_generators_are_not_tiled(kwargs):
    assert tileable_generator(ResidualGenerator(**kwargs)) is None


@pytest.mark.slow
def test_run_batch_tiles_over_the_memory_cap(generator, monkeypatch):
    calls = []
    real = inference.stylize_tiled
    monkeypatch.setattr(inference, "stylize_tiled", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    images = [DecodedImage(rgb=torch.rand(3, 120, 200, generator=torch.Generator().manual_seed(i)), alpha=None)
              for i in range(2)]
    with torch.inference_mode():
        ref = generator(torch.stack([img.rgb for img in images]))
    assert not calls and len(run_batch(generator, images, max_memory_mb=64)) == 2 and not calls  # fits: one batch
    out = run_batch(generator, images, max_memory_mb=1)  # 1 MB: every image over the cap → tiles
    assert len(calls) == 2
    assert max((o - r).abs().max().item() for o, r in zip(out, ref)) < TOL
    monkeypatch.setenv(limits.ENV_MAX_MEMORY, "1")  # what the TorchServe handler reads
    calls.clear()
    run_batch(generator, images[:1])
    assert len(calls) == 1


def test_memory_cap_validation(monkeypatch):
    assert limits.memory_cap_bytes(10) == 10 * 2**20
    monkeypatch.setenv(limits.ENV_MAX_MEMORY, "lots")
    with pytest.raises(ValueError, match="INSTYLE_MAX_MEMORY_MB"):
        limits.memory_cap_bytes()
    with pytest.raises(ValueError):
        limits.memory_cap_bytes(0)


@pytest.mark.slow
def test_cli_max_memory_gives_the_same_pixels(tmp_path_factory, tmp_path):
    run = shared_export(tmp_path_factory)
    src = tmp_path / "in.png"
    src.write_bytes(encode_pil(rng_image(130, 170, seed=5)))
    model = str(run / "export" / "generator.pt")
    assert cli(["stylize", "--model", model, str(src), str(tmp_path / "whole.png")]) == 0
    assert cli(["stylize", "--model", model, "--max_memory_mb", "1", str(src), str(tmp_path / "tiled.png")]) == 0
    whole = np.asarray(decode_pil((tmp_path / "whole.png").read_bytes())).astype(int)
    tiled = np.asarray(decode_pil((tmp_path / "tiled.png").read_bytes())).astype(int)
    assert whole.shape == tiled.shape == (130, 170, 3)
    assert np.abs(whole - tiled).max() <= 1  # 8-bit rounding of values equal to ~1e-6


def test_memory_estimate_follows_the_width():
    """A quarter-width model's activations are smaller: at a cap between the two estimates the width-8
    model runs whole and the width-32 one in tiles (same pixels either way)."""
    h, w = 200, 240
    assert untiled_bytes(h, w, 1, 8) < untiled_bytes(h, w, 1, 32) < untiled_bytes(h, w, 2, 32)
    cap_mb = (untiled_bytes(h, w, 1, 8) + untiled_bytes(h, w, 1, 32)) // 2 // 2**20 + 1
    assert untiled_bytes(h, w, 1, 8) <= cap_mb * 2**20 < untiled_bytes(h, w, 1, 32)
    image = [DecodedImage(rgb=torch.rand(3, h, w, generator=torch.Generator().manual_seed(9)), alpha=None)]
    for width, tiled in ((8, False), (32, True)):
        g = ResidualGenerator(width=width, n_residual=1).for_inference()
        calls = []
        real = inference.stylize_tiled
        inference.stylize_tiled = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            out = run_batch(g, image, max_memory_mb=cap_mb)[0]
        finally:
            inference.stylize_tiled = real
        with torch.inference_mode():
            torch.testing.assert_close(out, g(image[0].rgb[None])[0], rtol=0, atol=TOL)
        assert bool(calls) is tiled, width
