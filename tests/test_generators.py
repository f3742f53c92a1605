"""Generators: size contract and the paper's instance-norm properties."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

from pipeline.model.norms import InstanceNorm2d

from pipeline.model.generators import MultiScaleGenerator, ResidualGenerator, build_generator

SIZES = [(37, 53), (64, 96), (101, 77), (1, 1), (5, 300), (16, 16)]


def fitted(arch: str, **kw) -> torch.nn.Module:
    """A small generator trained briefly towards the identity, so its output follows its input."""
    g = small(arch, **kw).train()
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    for _ in range(30):
        x = torch.rand(4, 3, 32, 32)
        opt.zero_grad(); (g(x) - x).abs().mean().backward(); opt.step()
    return g.eval()


def small(arch: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch in ("residual", "compact"):
        return build_generator(arch, n_residual=1, width=8, **kw)
    return MultiScaleGenerator(scales=3, branch_channels=4, **kw)


@pytest.mark.parametrize("arch,norm,padding", list(itertools.product(["residual", "compact", "multiscale"], ["instance", "batch", "none"], ["reflect", "zero"])))
def test_output_size_equals_input_size(arch, norm, padding):
    g = small(arch, norm=norm, padding=padding).eval()
    with torch.no_grad():
        for h, w in SIZES:
            x = torch.rand(2, 3, h, w)
            y = g(x)
            assert y.shape == x.shape, (arch, norm, padding, h, w, tuple(y.shape))
            assert 0 <= float(y.min()) and float(y.max()) <= 1


def test_transposed_upsampling_and_train_mode_sizes():
    """Transposed-convolution upsampling in train mode: the input's size, an image in [0, 1], and a
    gradient reaching the first layer (train mode's batch statistics, not the eval path)."""
    g = ResidualGenerator(upsample="transposed", n_residual=1, width=8).train()
    x = torch.rand(2, 3, 45, 70)
    y = g(x)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    y.mean().backward()
    first = next(p for p in g.parameters() if p.dim() == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_full_size_residual_generator_has_johnson_parameter_count():
    n = sum(p.numel() for p in ResidualGenerator().parameters())
    assert n == 1_679_235  # 1.68 M, the public reference architecture


def test_instance_norm_has_no_running_statistics():
    g = ResidualGenerator()
    norms = [m for m in g.modules() if isinstance(m, InstanceNorm2d)]
    assert len(norms) == 3 + 2 * 5 + 2 and norms == g.norms()
    assert all(not list(m.buffers()) for m in norms)
    assert not any(k.startswith("running") or "running_" in k for k in g.state_dict())


FORMS = [dict(), dict(n_styles=3, strength=True), dict(n_styles=2), dict(strength=True), dict(norm="batch"),
         dict(norm="none"), dict(padding="zero"), dict(upsample="transposed"), dict(upsample="transposed", n_styles=2),
         dict(padding="zero", strength=True), dict(output="clamp"), dict(layout="compact"),
         dict(layout="compact", n_styles=3, strength=True), dict(layout="compact", padding="zero", n_styles=2)]


@pytest.mark.parametrize("kwargs", FORMS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "plain")
def test_inference_form_computes_the_training_form(kwargs):
    """for_inference (channels-last, regrouped decoder) is the same function as the module as trained,
    on odd sizes, batches mixing styles and strengths; the training form does not change with grad mode."""
    torch.manual_seed(0)
    g = ResidualGenerator(width=8, n_residual=2, **kwargs)
    with torch.no_grad():  # move every parameter off its initial value so each one matters
        for p in g.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if kwargs.get("norm") == "batch":
        g.train()(torch.rand(4, 3, 32, 32))  # running statistics
    g.eval()
    x = torch.rand(2, 3, 37, 53)
    args = (x,)
    if g.conditioned:
        args = (x, torch.rand(2, g.n_styles) + 0.1) + ((torch.tensor([0.2, 1.0]),) if g.has_strength else ())
    trained = g(*args)
    with torch.no_grad():
        assert torch.equal(g(*args), trained)  # no grad-mode switch: the same code either way
        # the training form's own float32 rounding, against the same function in float64
        rounding = (trained - copy.deepcopy(g).double()(*(a.double() for a in args))).abs().max().item()
    g.for_inference()
    assert g.inference and not g.training and not any(p.requires_grad for p in g.parameters())
    with torch.inference_mode():
        served = g(*args)
    assert served.is_contiguous() and served.shape == x.shape
    # Regrouped sums round differently: no further off than twice the training form's own rounding (the linear
    # `clamp` output, ~10 before the clamp with these weights, rounds to ~1e-5; the sigmoid damps it).
    torch.testing.assert_close(served, trained.detach(), rtol=0, atol=max(1e-5, 2 * rounding))


@pytest.mark.parametrize("arch", ["residual", "compact", "multiscale"])
def test_instance_norm_output_ignores_contrast_and_batch_mates(arch):
    """Paper Fig. 2: g(a·x + b) ≈ g(x) for a > 0, in eval mode, and batch mates do not matter."""
    g = fitted(arch, norm="instance", padding="reflect")
    torch.manual_seed(1)
    x = torch.rand(1, 3, 41, 58)
    # Exact up to the norm's eps (1e-5 added to the variance): the small multi-scale net has
    # low-variance coarse levels where eps weighs more.
    tol = 1e-2 if arch == "multiscale" else 2e-3
    with torch.no_grad():
        y = g(x)
        contrasts = [(0.5, 0.25), (2.0, -0.3)] + ([(0.2, 0.0)] if arch != "multiscale" else [])
        for a, b in contrasts:
            diff = (g(a * x + b) - y).abs().max().item()
            assert diff < tol, f"contrast {a}·x+{b}: max abs diff {diff}"
        others = torch.rand(3, 3, 41, 58) * 0.3
        in_batch = g(torch.cat([others, x]))[-1:]
        assert (in_batch - y).abs().max().item() < 1e-5


def test_batch_norm_in_eval_mode_depends_on_contrast():
    """The paper's baseline: BatchNorm with running statistics fails the contrast check."""
    for arch in ("residual", "compact", "multiscale"):
        g = fitted(arch, norm="batch", padding="reflect")  # running statistics filled while fitting
        x = torch.rand(1, 3, 41, 58)
        with torch.no_grad():
            diff = (g(0.5 * x + 0.25) - g(x)).abs().max().item()
        assert diff > 0.05, f"{arch}: batch norm unexpectedly contrast-invariant (max abs diff {diff})"


def test_bad_choices_are_rejected_clearly():
    with pytest.raises(ValueError, match="norm='group'"):
        build_generator("residual", norm="group")
    with pytest.raises(ValueError, match="arch='unet'"):
        build_generator("unet")
    with pytest.raises(ValueError, match="padding='circular'"):
        ResidualGenerator(padding="circular")


def test_multiscale_noise_is_zero_in_eval_and_random_in_train():
    g = small("multiscale")
    x = torch.rand(1, 3, 40, 40)
    g.eval()
    with torch.no_grad():
        assert torch.equal(g(x), g(x))
    g.train()
    with torch.no_grad():
        assert not torch.equal(g(x), g(x))
