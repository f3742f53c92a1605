"""Conditional instance norm (several styles, strength): against plain instance norm, convexity of
mixes, contrast invariance for every style and mix, the state-dict resolution tiled inference uses,
and the controls' parsing and errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.model.norms import InstanceNorm2d
from pipeline.model.generators import ResidualGenerator, build_generator
from pipeline.serve.controls import Conditioning, ModelControls, call_model, conditioning, parse_strength, parse_style
from pipeline.common.image_codec import BadImageRequest, DecodedImage
from pipeline.serve.inference import run_batch
from pipeline.serve.tiling import stylize_tiled


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its initial value, so each style's table and the strength path matter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.eval()


@pytest.fixture(scope="module")
def trio() -> ResidualGenerator:
    return randomized(ResidualGenerator(width=8, n_residual=2, n_styles=3, strength=True))


def one_hot(k: int, n: int, batch: int = 1) -> torch.Tensor:
    return F.one_hot(torch.full((batch,), k), n).float()


@pytest.mark.parametrize("channels_last", [False, True])
def test_one_hot_weights_are_plain_instance_norm_with_that_styles_parameters(channels_last):
    norm = randomized(InstanceNorm2d(6, n_styles=3, strength=False))
    x = torch.randn(2, 6, 9, 11) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for k in range(3):
        gamma, beta = norm.affine(one_hot(k, 3, 2), torch.zeros(2, 0))
        assert torch.equal(gamma, norm.weight[k].expand(2, -1)) and torch.equal(beta, norm.bias[k].expand(2, -1))  # exact
        with torch.no_grad():
            expected = F.instance_norm(x.contiguous(), weight=norm.weight[k], bias=norm.bias[k], eps=1e-5)
            torch.testing.assert_close(norm(x, one_hot(k, 3, 2), torch.zeros(2, 0)), expected, rtol=0, atol=2e-6)


def test_mixes_are_convex_in_gamma_and_beta():
    norm = randomized(InstanceNorm2d(5, n_styles=3, strength=False))
    mix = torch.tensor([[0.2, 0.5, 0.3]])
    gamma, beta = norm.affine(mix, torch.zeros(1, 0))
    torch.testing.assert_close(gamma[0], 0.2 * norm.weight[0] + 0.5 * norm.weight[1] + 0.3 * norm.weight[2])
    torch.testing.assert_close(beta[0], 0.2 * norm.bias[0] + 0.5 * norm.bias[1] + 0.3 * norm.bias[2])
    # the generator normalizes the weights it is given: (2, 5, 3) is the same mix
    g = randomized(ResidualGenerator(width=8, n_residual=1, n_styles=3))
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(g(x, mix), g(x, mix * 10))


def test_styles_and_strengths_change_the_output_per_sample(trio):
    x = torch.rand(1, 3, 40, 40).expand(4, -1, -1, -1)
    weights = torch.stack([one_hot(0, 3)[0], one_hot(1, 3)[0], torch.tensor([0.5, 0.5, 0.0]), one_hot(0, 3)[0]])
    strength = torch.tensor([1.0, 1.0, 1.0, 0.3])
    with torch.no_grad():
        y = trio(x, weights, strength)
        alone = [trio(x[:1], weights[i:i + 1], strength[i:i + 1]) for i in range(4)]
    for i in range(4):  # a batch mixing styles and strengths = each image alone
        torch.testing.assert_close(y[i:i + 1], alone[i], rtol=0, atol=1e-5)
    diffs = [(y[0] - y[i]).abs().mean().item() for i in (1, 2, 3)]
    assert min(diffs) > 1e-3, diffs
    with torch.no_grad():  # defaults: the first style at full strength
        torch.testing.assert_close(trio(x[:1]), y[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("weights,strength", [((1, 0, 0), 1.0), ((0, 1, 0), 1.0), ((0, 0, 1), 1.0), ((0.3, 0.3, 0.4), 1.0)])
def test_contrast_invariance_for_every_style_and_mix(trio, weights, strength):
    """At full strength (below it the photo itself is mixed in, contrast and all: strength 0 is the photo)."""
    x = torch.rand(1, 3, 48, 40)
    w, s = torch.tensor([weights], dtype=torch.float32), torch.tensor([strength])
    with torch.no_grad():
        base = trio(x, w, s)
        for a, b in ((0.5, 0.2), (1.7, -0.3)):
            torch.testing.assert_close(trio(a * x + b, w, s), base, rtol=0, atol=2e-3)


def test_single_style_without_strength_is_the_plain_generator():
    plain, cond = ResidualGenerator(width=8, n_residual=1), ResidualGenerator(width=8, n_residual=1, n_styles=1)
    assert not cond.conditioned and plain.state_dict().keys() == cond.state_dict().keys()
    assert all(cond.state_dict()[f"down.{i}.1.weight"].dim() == 1 for i in range(3))  # plain (C,) norm parameters
    with pytest.raises(ValueError, match="one style"):
        plain(torch.rand(1, 3, 16, 16), torch.ones(1, 1))


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="norm='instance'"):
        ResidualGenerator(norm="batch", n_styles=2)
    with pytest.raises(ValueError, match="arch='residual'"):
        build_generator("multiscale", n_styles=2)
    g = ResidualGenerator(width=8, n_residual=1, n_styles=2)
    with pytest.raises(ValueError, match="without the strength control"):
        g(torch.rand(1, 3, 16, 16), torch.ones(1, 2), torch.ones(1))


def test_tiled_inference_keeps_each_style_and_strength(trio):
    """Tiled inference runs the conditioned generator's own norms with whole-image statistics: its
    result equals the untiled conditional generator's for a style, a mix and a strength."""
    x = torch.rand(1, 3, 70, 90)
    for weights, strength in (((0, 1, 0), 1.0), ((0.6, 0.0, 0.4), 0.25)):
        w, s = torch.tensor([weights], dtype=torch.float32), torch.tensor([strength])
        with torch.no_grad():
            expected = trio(x, w, s)
        torch.testing.assert_close(stylize_tiled(trio, x, tile=32, style=w, strength=s), expected, rtol=0, atol=2e-4)


def test_run_batch_mixes_styles_in_one_batch_and_tiles_per_style(trio, monkeypatch):
    trio.instyle_controls = ModelControls(("a", "b", "c"), strength=True)
    images = [DecodedImage(torch.rand(3, 36, 52), None) for _ in range(3)]
    conds = [Conditioning((0.0, 1.0, 0.0), 1.0), None, Conditioning((0.5, 0.0, 0.5), 0.3)]
    out = run_batch(trio, images, conditions=conds)
    with torch.no_grad():
        expected = [trio(images[0].rgb[None], torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1.0])),
                    trio(images[1].rgb[None]),
                    trio(images[2].rgb[None], torch.tensor([[0.5, 0.0, 0.5]]), torch.tensor([0.3]))]
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want[0], rtol=0, atol=1e-5)
    monkeypatch.setattr("pipeline.serve.inference.untiled_bytes", lambda h, w, b=1, width=32: 10**12)  # force tiles
    tiled = run_batch(trio, images, conditions=conds, max_memory_mb=64)
    for got, want in zip(tiled, expected):
        torch.testing.assert_close(got, want[0], rtol=0, atol=2e-4)


CONTROLS = ModelControls(("starry_night", "the_great_wave", "udnie"), strength=True)


def test_style_specs_parse_to_normalized_weights():
    assert parse_style(None, CONTROLS) == (1.0, 0.0, 0.0)
    assert parse_style("the_great_wave", CONTROLS) == (0.0, 1.0, 0.0)
    assert parse_style("starry_night:0.7, udnie:0.3", CONTROLS) == pytest.approx((0.7, 0.0, 0.3))
    assert parse_style("starry_night:2,udnie:2", CONTROLS) == pytest.approx((0.5, 0.0, 0.5))
    assert parse_strength(None, CONTROLS) == 1.0 and parse_strength("0.25", CONTROLS) == 0.25


@pytest.mark.parametrize("params,message", [
    ({"style": "mona_lisa"}, "unknown style 'mona_lisa'"),
    ({"style": "udnie:-1"}, "must be a finite number ≥ 0"),
    ({"style": "udnie:lots"}, "is not a number"),
    ({"style": "udnie:0"}, "sum to 0"),
    ({"strength": "1.5"}, "outside \\[0, 1\\]"),
    ({"strength": "nan"}, "outside \\[0, 1\\]"),
    ({"strength": "strong"}, "is not a number"),
])
def test_bad_controls_are_400_and_list_the_styles(params, message):
    with pytest.raises(BadImageRequest, match=message) as err:
        conditioning(params, CONTROLS)
    assert err.value.status == 400
    if "style" in params:
        assert "starry_night, the_great_wave, udnie" in str(err.value)


def test_strength_on_a_model_without_the_control_is_refused():
    plain = ModelControls(("candy",))
    assert parse_strength("1", plain) == 1.0
    with pytest.raises(BadImageRequest, match="without the strength control"):
        parse_strength("0.5", plain)
    g = randomized(ResidualGenerator(width=8, n_residual=1))
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(call_model(g, x, None, plain), g(x))


def test_bf16_autocast_training_step_of_the_conditional_generator(trio):
    """The gpu preset trains in bf16-mixed: the style tables and strength path run under autocast."""
    g = ResidualGenerator(width=8, n_residual=1, n_styles=3, strength=True).train()
    x = torch.rand(2, 3, 32, 32)
    w, s = torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]]), torch.tensor([1.0, 0.2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g(x, w, s)
    y.float().mean().backward()
    assert torch.isfinite(y.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in g.named_parameters() if ".strength_" not in n)
    with torch.no_grad():
        torch.testing.assert_close(y.float(), g(x, w, s), rtol=0, atol=0.05)
