"""Loss math against hand computations on tiny tensors, and the real VGG in the loss."""
from __future__ import annotations

import pytest
import torch

from pipeline.loss.losses import PerceptualLoss, content_loss, gram, style_loss, tv_loss


def test_gram_by_hand():
    # One image, 2 channels, 1×2 pixels: F = [[1, 2], [3, 4]], G = F Fᵀ / (C·H·W) = [[5, 11], [11, 25]] / 4.
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    assert torch.allclose(gram(f), torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4)


def test_gram_is_fp32_under_autocast():
    f = torch.rand(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram(f.bfloat16())
    # computed in fp32 from the bf16 features, not a bf16 product cast up (bf16 keeps 8 bits: ~0.4 % off)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, gram(f.bfloat16().float()), rtol=1e-5, atol=0)


def test_style_loss_by_hand_and_broadcast_over_batch():
    g = {"a": torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]).repeat(2, 1, 1)}
    t = {"a": torch.tensor([[[0.0, 2.0], [2.0, 3.0]]])}
    # squared errors per image: 1, 0, 0, 4 → mean 1.25; weight 2 → 2.5
    assert style_loss(g, t, {"a": 2.0}).item() == pytest.approx(2.5)


def test_content_and_tv_by_hand():
    assert content_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # vertical diffs 2, 3 → mean sq 6.5; horizontal diffs 1, 2 → mean sq 2.5
    assert tv_loss(x).item() == pytest.approx(9.0)


def _reference_terms(weights, style, out, content, *, style_weight, content_weight):
    """Style and content terms computed without pipeline.loss.vgg / losses (only the weights loader)."""
    from torchvision.models import vgg16

    from pipeline.loss.vgg_weights import load_state_dict

    net = torch.nn.Module()
    net.features = vgg16().features[:23]
    net.load_state_dict(load_state_dict(weights), strict=True)
    net.eval()
    mean = torch.tensor([123.68, 116.779, 103.939], dtype=torch.float64).view(1, 3, 1, 1)
    net.double()

    def feats(x):
        h, taps = x.double() * 255 - mean, {}
        for i, layer in enumerate(net.features):
            h = layer(h)
            if i in (3, 8, 15, 22):
                taps[i] = h
        return taps

    def grams(f):
        b, c, h, w = f.shape
        m = f.reshape(b, c, h * w)
        return m @ m.transpose(1, 2) / (c * h * w)

    with torch.no_grad():
        fs, fo, fc = feats(style), feats(out), feats(content)
        style_term = sum(((grams(fo[i]) - grams(fs[i])) ** 2).mean() for i in (3, 8, 15, 22))
        content_term = ((fo[8] - fc[8]) ** 2).mean()
    return {"style": style_weight * style_term.item(), "content": content_weight * content_term.item()}


@pytest.mark.slow
def test_perceptual_loss_terms_with_real_vgg(vgg_weights):
    torch.manual_seed(0)
    style = torch.rand(1, 3, 64, 64)
    loss = PerceptualLoss(style, style_weight=2.0, content_weight=3.0, tv_weight=0.5, vgg_weights=vgg_weights)
    content = torch.rand(2, 3, 48, 48)
    same = loss(content, content)
    assert same["content"].item() == 0.0
    out = torch.rand(2, 3, 48, 48, requires_grad=True)
    terms = loss(out, content)
    # An independent reference: torchvision's plain vgg16().features with the same verified weights,
    # caffe preprocessing (0..255 minus the mean, no std), NCHW fp32, hand-written Gram and MSE.
    ref = _reference_terms(vgg_weights, style, out.detach(), content, style_weight=2.0, content_weight=3.0)
    assert terms["style"].item() == pytest.approx(ref["style"], rel=1e-4)
    assert terms["content"].item() == pytest.approx(ref["content"], rel=1e-4)
    assert ref["style"] > 0 and ref["content"] > 0
    assert terms["tv"].item() == pytest.approx(0.5 * tv_loss(out).item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx(ref["style"] + ref["content"] + 0.5 * tv_loss(out).item(), rel=1e-4)
    terms["total"].backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    assert not any(p.requires_grad for p in loss.vgg.parameters())
    # The style image against itself has zero style loss.
    assert loss(style, style)["style"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_bad_loss_config_is_rejected(vgg_weights):
    with pytest.raises(ValueError, match="content_layer"):
        PerceptualLoss(torch.rand(1, 3, 8, 8), content_layer="relu5_3", vgg_weights=vgg_weights)
    with pytest.raises(ValueError, match="shape"):
        PerceptualLoss(torch.rand(3, 8, 8), vgg_weights=vgg_weights)


def test_build_loss_takes_a_models_loss_hyper_parameters_and_the_defaults_elsewhere(vgg_weights):
    """build_loss: the loss keys of a model's hyper-parameters (others, e.g. lr, ignored; vgg_weights
    honoured), LOSS_DEFAULTS for the rest, one target per style image, in eval mode."""
    from pipeline.loss.losses import LOSS_DEFAULTS, build_loss

    styles = [torch.rand(1, 3, 24, 24), torch.rand(1, 3, 16, 20)]
    hp = {"style_weight": 1e-4, "content_weight": 2e-5, "content_layer": "relu3_3", "lr": 0.5, "vgg_weights": str(vgg_weights)}
    loss = build_loss(styles, hp)
    assert loss.weights == {"style": 1e-4, "content": 2e-5, "tv": LOSS_DEFAULTS["tv_weight"]}
    assert loss.content_layer == "relu3_3" and loss.style_layers == LOSS_DEFAULTS["style_layers"]
    assert loss.n_styles == 2 and not loss.training and not loss.vgg.training
    default = build_loss(styles[0], {"vgg_weights": str(vgg_weights)})
    assert default.weights == {"style": LOSS_DEFAULTS["style_weight"], "content": LOSS_DEFAULTS["content_weight"],
                               "tv": LOSS_DEFAULTS["tv_weight"]}
    assert default.content_layer == LOSS_DEFAULTS["content_layer"] and default.n_styles == 1
