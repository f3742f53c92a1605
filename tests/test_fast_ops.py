"""pipeline.model.fast_ops: the regrouped decoder layers compute the plain layers' sums (float rounding
only), and the generator uses them only where they apply (inference, reflect + nearest)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from pipeline.model.fast_ops import space_to_depth_conv, upsample_conv
from pipeline.model.generators import ResidualGenerator


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 4), (16, 23)])
def test_upsample_conv_equals_upsample_pad_conv(size):
    x, w, b = _rand(2, 6, *size), _rand(5, 6, 3, 3, seed=1), _rand(5, seed=2)
    want = F.conv2d(F.pad(F.interpolate(x, scale_factor=2.0, mode="nearest"), (1, 1, 1, 1), mode="reflect"), w, b)
    got = upsample_conv(x, w, b)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-6 * want.abs().max().item() * 10  # float rounding of regrouped sums


@pytest.mark.parametrize("k, size", [(9, (10, 10)), (9, (14, 26)), (3, (6, 10)), (5, (12, 8))])
def test_space_to_depth_conv_equals_conv(k, size):
    x, w, b = _rand(2, 7, *size), _rand(3, 7, k, k, seed=1), _rand(3, seed=2)
    want = F.conv2d(x, w, b)
    got = space_to_depth_conv(x, w, b)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-6 * want.abs().max().item() * 10


def _generator(**kwargs) -> ResidualGenerator:
    torch.manual_seed(0)
    g = ResidualGenerator(**kwargs).eval()
    with torch.no_grad():  # norm affines off 1/0 so they matter
        for p in g.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return g


@pytest.mark.parametrize("kwargs, fast", [({}, True), ({"norm": "batch"}, True), ({"padding": "zero"}, False),
                                          ({"upsample": "transposed"}, False)])
@pytest.mark.slow
def test_generator_inference_path_matches_the_training_path(kwargs, fast):
    g = _generator(**kwargs)
    assert g.fast_decoder is fast
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = g(x)  # the module as built: the plain layers, as in training (whatever the grad mode)
    g.for_inference()
    with torch.inference_mode():
        fast_out = g(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.freeze(torch.jit.script(g))(x)
    assert (fast_out - plain).abs().max().item() < 1e-5
    assert (scripted - plain).abs().max().item() < 1e-5


def test_training_still_backpropagates_through_the_plain_layers():
    g = _generator().train()
    x = torch.rand(2, 3, 32, 32)
    g(x).mean().backward()
    assert all(p.grad is not None for p in g.parameters())
