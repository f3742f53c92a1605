"""Colour preservation: the output keeps the stylized luminance and takes the photo's chroma,
checked with PIL's own YCbCr conversion (an independent implementation), through the offline CLI
and the handler, each against Pillow + the eager generator; bad values of the option are refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.__main__ import main as cli
from pipeline.serve.color import preserve_color, rgb_to_ycbcr, ycbcr_to_rgb
from pipeline.common.image_codec import BadImageRequest
from pipeline.serve.options import parse_options
from serving_helpers import (decode_pil, encode_pil, load_handler, reference_output, rng_image, run_handler, shared_export,
                             ts_request)


def pil_ycbcr(arr: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).convert("YCbCr"), dtype=np.float64)


def test_conversion_round_trips_and_matches_pil():
    rgb = torch.from_numpy(rng_image(20, 30, seed=1)).permute(2, 0, 1).double() / 255
    assert (ycbcr_to_rgb(rgb_to_ycbcr(rgb)) - rgb).abs().max().item() < 1e-12
    ours = (rgb_to_ycbcr(rgb) * 255).permute(1, 2, 0).numpy()
    assert np.abs(ours - pil_ycbcr(rng_image(20, 30, seed=1))).max() <= 1.0  # PIL rounds to 8 bit


def test_luminance_from_the_stylized_chroma_from_the_photo():
    photo = torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(2)) * 0.6 + 0.2
    stylized = torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(3)) * 0.6 + 0.2
    out = rgb_to_ycbcr(preserve_color(stylized, photo).double())
    want_y, want_chroma = rgb_to_ycbcr(stylized.double())[:1], rgb_to_ycbcr(photo.double())[1:]
    unclipped = ycbcr_to_rgb(torch.cat([want_y, want_chroma]))
    inside = (unclipped.ge(0) & unclipped.le(1)).all(0)  # where no channel clips, the result is exact
    assert inside.float().mean() > 0.5
    assert (out[:1] - want_y).abs()[:, inside].max().item() < 1e-6
    assert (out[1:] - want_chroma).abs()[:, inside].max().item() < 1e-6
    with pytest.raises(ValueError, match="shapes differ"):
        preserve_color(stylized, photo[:, :10])


def test_option_parsing():
    assert parse_options({}, 4096).preserve_color is False
    assert parse_options({"preserve_color": "TRUE"}, 4096).preserve_color is True
    assert parse_options({"preserve_color": "0"}, 4096).preserve_color is False
    with pytest.raises(BadImageRequest, match="preserve_color='maybe'"):
        parse_options({"preserve_color": "maybe"}, 4096)


@pytest.mark.slow
def test_cli_and_handler_give_the_photos_colours(tmp_path_factory, tmp_path):
    run = shared_export(tmp_path_factory)
    photo = rng_image(40, 56, seed=7)
    (tmp_path / "in.png").write_bytes(encode_pil(photo))
    model = str(run / "export" / "generator.pt2")
    assert cli(["stylize", "--model", model, str(tmp_path / "in.png"), str(tmp_path / "plain.png")]) == 0
    assert cli(["stylize", "--model", model, "--preserve_color", "true", str(tmp_path / "in.png"),
                str(tmp_path / "kept.png")]) == 0
    plain, kept = (np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("plain.png", "kept.png"))
    src, p, k = pil_ycbcr(photo), pil_ycbcr(plain), pil_ycbcr(kept)
    assert np.abs(k[..., 0] - p[..., 0]).mean() < 1.0  # the stylized luminance
    # the photo's chroma (up to 8-bit rounding and clipping), which the plain stylization does not have
    assert np.median(np.abs(k[..., 1:] - src[..., 1:])) <= 1.0 < np.median(np.abs(p[..., 1:] - src[..., 1:]))
    # both against Pillow + the eager generator with the luma shift written out (serving_helpers.reference_output)
    want = reference_output(run, encode_pil(photo), preserve_color=True).astype(int)
    assert np.abs(kept.astype(int) - want).max() <= 1
    handler, context = load_handler(run / "export", serialized="generator.pt2")
    (res,) = run_handler(handler, context, [ts_request(encode_pil(photo), headers={"X-Preserve-Color": "true"})])
    assert res[0] == 200 and np.abs(np.asarray(decode_pil(res[2]).convert("RGB")).astype(int) - want).max() <= 1
    (bad,) = run_handler(handler, context, [ts_request(encode_pil(photo), headers={"X-Preserve-Color": "perhaps"})])
    assert bad[0] == 400 and b"preserve_color" in bad[2]
