"""The strength control (version 2): strength 0 gives the photo back for every style and mix, tiled or
not; strength 1 is exactly the network without the control's mix; checkpoints of version 1 (norms
only) still load as version 1; the photo term and the strength curve against closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.loss.losses import photo_loss
from pipeline.model.checkpoint import generator_from_checkpoint, generator_from_weights, strength_kwargs
from pipeline.model.generators import PHOTO_EPS, ResidualGenerator
from pipeline.quality.strength_curve import strength_curve
from pipeline.serve.tiling import stylize_tiled


def randomized(g: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its initial value (the strength path starts at zero otherwise)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return g.eval()


@pytest.fixture(scope="module")
def duo() -> ResidualGenerator:
    return randomized(ResidualGenerator(width=8, n_residual=2, n_styles=2, strength=True))


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (0.3, 0.7)])
def test_strength_zero_is_the_photo_for_every_style_and_mix_tiled_or_not(duo, weights):
    x = torch.rand(1, 3, 45, 61)
    w, zero = torch.tensor([weights]), torch.zeros(1)
    with torch.no_grad():
        plain = duo(x, w, zero)
    tiled = stylize_tiled(duo, x, tile=32, style=w, strength=zero)
    for y in (plain, tiled):
        assert (y - x.clamp(PHOTO_EPS, 1 - PHOTO_EPS)).abs().max() < 1e-5
    # the served form too (channels-last, regrouped decoder)
    serving = randomized(ResidualGenerator(width=8, n_residual=2, n_styles=2, strength=True)).for_inference()
    assert (serving(x, w, zero) - x).abs().max() <= PHOTO_EPS + 1e-5


def test_full_strength_is_the_network_without_the_mix(duo):
    """At s = 1 the mix drops out: the output is that of the same weights in a version-1 generator
    (norms conditioned, no mix), so the control costs nothing at full strength by construction."""
    v1 = ResidualGenerator(width=8, n_residual=2, n_styles=2, strength=True, strength_version=1).eval()
    v1.load_state_dict({k: v for k, v in duo.state_dict().items() if k != "strength_version"})
    x, w = torch.rand(2, 3, 40, 36), torch.tensor([[1.0, 0.0], [0.2, 0.8]])
    with torch.no_grad():
        assert torch.equal(duo(x, w, torch.ones(2)), v1(x, w, torch.ones(2)))
        assert torch.equal(duo(x, w), v1(x, w))  # no strength given = full strength
        # between the ends the photo is mixed in: another function than version 1's
        assert (duo(x, w, torch.full((2,), 0.5)) - v1(x, w, torch.full((2,), 0.5))).abs().max() > 1e-2


def test_version_1_weights_load_as_version_1_everywhere(duo):
    """A checkpoint or export of a version-1 model (no `strength_version` buffer in its weights) is
    rebuilt as version 1: its strength keeps meaning what it was trained for."""
    v1 = randomized(ResidualGenerator(width=8, n_residual=1, strength=True, strength_version=1))
    state = v1.state_dict()
    assert "strength_version" not in state and strength_kwargs(state) == {"strength": True, "strength_version": 1}
    assert strength_kwargs(duo.state_dict()) == {"strength": True, "strength_version": 2}
    assert strength_kwargs(ResidualGenerator(width=8).state_dict()) == {}
    ckpt = {"hyper_parameters": {"width": 8, "n_residual": 1}, "state_dict": {f"generator.{k}": v for k, v in state.items()}}
    for rebuilt in (generator_from_checkpoint(ckpt),
                    generator_from_weights("residual", {"width": 8, "n_residual": 1, "strength": True}, state)):
        assert rebuilt is not None and not rebuilt.photo_mix
        x, s = torch.rand(1, 3, 32, 32), torch.tensor([0.3])
        with torch.no_grad():
            assert torch.equal(rebuilt(x, None, s), v1(x, None, s))


def test_photo_loss_against_a_loop():
    out, photo, scale = torch.rand(3, 3, 8, 9), torch.rand(3, 3, 8, 9), torch.tensor([0.0, 0.5, 1.0])
    expected = sum(float(scale[b]) * float(((out[b] - photo[b]) ** 2).mean()) for b in range(3)) / 3
    assert photo_loss(out, photo, scale).item() == pytest.approx(expected, rel=1e-6)
    assert photo_loss(out, photo, torch.zeros(3)).item() == 0.0  # vanishes at full strength (scale = 1 − s = 0)


class _ChannelMeanLoss(torch.nn.Module):
    """A stand-in perceptual loss with a closed form: style = squared distance of the channel means to a
    target colour, content = mean squared difference to the photo."""

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        target = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
        return {"style": ((y.mean(dim=(2, 3), keepdim=True) - target) ** 2).sum(), "content": ((y - x) ** 2).mean()}


def test_strength_curve_of_a_pixel_cross_fade_is_linear_and_is_its_own_fade():
    """For the cross-fade y(s) = (1 − s)·x + s·z the distance to the photo is s·|z − x|: the curve's shares
    are the strengths, the PSNR is the closed form, and the model equals the fade it is compared with."""
    photos = [torch.rand(1, 3, 16, 20) for _ in range(2)]
    painted = {id(x): torch.rand_like(x) for x in photos}
    curve = strength_curve(lambda x, s: (1 - s) * x + s * painted[id(x)], _ChannelMeanLoss(), photos)
    for row in curve["rows"]:
        assert row["share_of_full"] == pytest.approx(row["strength"], abs=1e-5)
    full = [float(((painted[id(x)] - x) ** 2).mean().sqrt()) for x in photos]
    assert curve["rows"][-1]["rmse_to_photo"] == pytest.approx(sum(full) / 2, rel=1e-5)
    assert curve["rows"][0]["psnr_to_photo_db"] == math.inf
    middle = [10 * math.log10(1 / float(((0.5 * (painted[id(x)] - x).double()) ** 2).mean())) for x in photos]
    assert curve["rows"][2]["psnr_to_photo_db"] == pytest.approx(sum(middle) / 2, rel=1e-5)  # the mean of the photos' PSNRs
    fade = curve["cross_fade"]
    assert fade["fade_t"] == pytest.approx(0.5, abs=1e-5) and fade["model_rmse_to_fade"] < 1e-6
    assert fade["model_style"] == pytest.approx(fade["fade_style"], rel=1e-5)
    with pytest.raises(ValueError, match="include 0 and 1"):
        strength_curve(lambda x, s: x, _ChannelMeanLoss(), photos, strengths=(0.5, 1.0))
