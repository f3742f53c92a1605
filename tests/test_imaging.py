"""pipeline.common.image_codec: request options, decoding every common image flavour, encoding, errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.common.image_codec import BadImageRequest, DecodedImage, decode, encode, limit_side, to_uint8
from pipeline.serve.options import parse_options
from serving_helpers import decode_pil, encode_pil, rng_image


# ---- options --------------------------------------------------------------------------------

def test_options_defaults_and_aliases():
    o = parse_options({}, 4096)
    assert (o.format, o.quality, o.max_side) == ("png", 90, 4096)
    assert parse_options({"format": "JPG"}, 4096).format == "jpeg"
    assert parse_options({"Format": " webp "}, 4096).format == "webp"
    assert parse_options({"format": ""}, 4096).format == "png"  # empty means default
    assert parse_options({"quality": "75", "max_side": "512"}, 4096).quality == 75


def test_options_max_side_is_capped_by_the_server():
    assert parse_options({"max_side": "100000"}, 2048).max_side == 2048
    assert parse_options({"max_side": "300"}, 2048).max_side == 300


@pytest.mark.parametrize("params, words", [
    ({"format": "gif"}, "format='gif'"),
    ({"quality": "0"}, "out of range"),
    ({"quality": "101"}, "out of range"),
    ({"quality": "high"}, "not an integer"),
    ({"max_side": "0"}, "out of range"),
    ({"max_side": "1.5"}, "not an integer"),
])
def test_options_rejected_with_a_clear_message(params, words):
    with pytest.raises(BadImageRequest) as e:
        parse_options(params, 4096)
    assert e.value.status == 400 and words in str(e.value)


# ---- decoding ---------------------------------------------------------------------------------

def test_rgb_png_round_trip_is_exact():
    arr = rng_image(23, 31)
    img = decode(encode_pil(arr))
    assert img.size == (23, 31) and img.alpha is None and img.rgb.dtype == torch.float32
    assert np.array_equal(to_uint8(img.rgb), arr)
    data, ctype = encode(img.rgb, None, "png")
    assert ctype == "image/png" and np.array_equal(np.asarray(decode_pil(data)), arr)


def test_exif_orientation_is_applied():
    arr = rng_image(20, 40)  # landscape pixels, EXIF says "rotate 90° CW to display" → portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode_pil(arr, "JPEG", exif=exif.tobytes(), quality=95)
    img = decode(data)
    assert img.size == (40, 20)
    # the stored pixels (Pillow's decode, orientation ignored) turned 90° clockwise by numpy
    assert np.array_equal(to_uint8(img.rgb), np.rot90(np.asarray(decode_pil(data).convert("RGB")), -1))


def test_grey_palette_cmyk_become_rgb():
    arr = rng_image(16, 12)
    grey = decode(encode_pil(arr, "PNG", mode="L"))
    assert grey.rgb.shape == (3, 16, 12) and torch.equal(grey.rgb[0], grey.rgb[1]) and grey.alpha is None
    pal = decode(encode_pil(arr, "PNG", mode="P"))
    assert pal.rgb.shape == (3, 16, 12) and pal.alpha is None
    cmyk = decode(encode_pil(arr, "JPEG", mode="CMYK", quality=95))
    assert cmyk.rgb.shape == (3, 16, 12)
    assert np.abs(to_uint8(cmyk.rgb).astype(int) - arr.astype(int)).mean() < 12  # same picture, not inverted


def test_16_bit_grey_is_scaled_not_clipped():
    a16 = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, format="PNG")
    img = decode(buf.getvalue())
    assert img.rgb.shape == (3, 8, 64)
    assert img.rgb.min() == 0 and img.rgb.max() == 1 and 0.45 < img.rgb.mean() < 0.55


def test_alpha_kept_apart_and_restored_on_png():
    arr = rng_image(19, 27, channels=4)
    img = decode(encode_pil(arr))
    assert img.alpha is not None and img.alpha.shape == (1, 19, 27)
    data, _ = encode(img.rgb, img.alpha, "png")
    out = decode_pil(data)
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), arr)


def test_palette_transparency_and_la_have_alpha():
    arr = rng_image(10, 10, channels=4)
    la = decode(encode_pil(arr, "PNG", mode="LA"))
    assert la.alpha is not None and la.rgb.shape == (3, 10, 10)
    idx = np.zeros((6, 6), np.uint8)
    idx[:, 3:] = 1  # left half uses the transparent index 0
    p = Image.fromarray(idx, mode="P")
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    buf = io.BytesIO()
    p.save(buf, format="PNG", transparency=0)
    img = decode(buf.getvalue())
    assert img.alpha is not None
    assert img.alpha[0, :, :3].max() == 0 and img.alpha[0, :, 3:].min() == 1
    assert torch.allclose(img.rgb[:, 0, 4], torch.tensor([0.0, 0.0, 1.0]))


def test_opaque_alpha_is_dropped():
    arr = rng_image(8, 8, channels=4)
    arr[..., 3] = 255
    assert decode(encode_pil(arr)).alpha is None


def test_jpeg_output_composites_alpha_over_white():
    rgb = torch.zeros(3, 4, 4)  # black, fully transparent → white in a JPEG
    alpha = torch.zeros(1, 4, 4)
    data, ctype = encode(rgb, alpha, "jpeg", 95)
    out = np.asarray(decode_pil(data))
    assert ctype == "image/jpeg" and out.shape == (4, 4, 3) and out.min() > 245


def test_webp_keeps_alpha():
    arr = rng_image(12, 9, channels=4)
    img = decode(encode_pil(arr))
    data, ctype = encode(img.rgb, img.alpha, "webp", 90)
    out = decode_pil(data)
    assert ctype == "image/webp" and out.mode == "RGBA" and out.size == (9, 12)


def test_jpeg_round_trip_is_close():
    arr = rng_image(32, 48)
    img = decode(encode_pil(arr, "JPEG", quality=95))
    data, ctype = encode(img.rgb, None, "jpeg", 95)
    back = np.asarray(decode_pil(data)).astype(int)
    # one more lossy generation of a noisy image: close on average, not exact
    assert ctype == "image/jpeg" and back.shape == arr.shape
    assert np.abs(back - to_uint8(img.rgb).astype(int)).mean() < 8


def test_limit_side_downscales_only():
    img = DecodedImage(torch.rand(3, 100, 40), torch.rand(1, 100, 40))
    small = limit_side(img, 50)
    assert small.size == (50, 20) and small.alpha.shape == (1, 50, 20)
    assert limit_side(img, 500) is img and limit_side(img, None) is img


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("data, words", [
    (b"", "empty request body"),
    (b"definitely not an image", "cannot decode"),
    (encode_pil(rng_image(16, 16))[:60], "cannot decode"),  # truncated PNG
])
def test_bad_bytes_raise_bad_image_request(data, words):
    with pytest.raises(BadImageRequest) as e:
        decode(data)
    assert e.value.status == 400 and words in str(e.value)


def test_pixel_cap_is_checked_before_decoding():
    data = encode_pil(np.zeros((200, 300, 3), np.uint8))
    with pytest.raises(BadImageRequest) as e:
        decode(data, max_pixels=10_000)
    assert e.value.status == 413 and "300×200" in str(e.value)


def test_huge_header_is_refused_as_a_bomb():
    # A PNG header claiming 30000×30000 (900 MP): refused from the header alone.
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    import struct
    import zlib
    raw[16:24] = struct.pack(">II", 30000, 30000)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    with pytest.raises(BadImageRequest) as e:
        decode(bytes(raw))
    assert e.value.status == 413


# ---- one list of image suffixes for every command --------------------------------------------

DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # what `decode` promises to read


def test_every_suffix_decode_reads_is_listed_and_decodes(tmp_path):
    """Every file-name suffix PIL registers for a format `decode` reads is in IMAGE_SUFFIXES, a file
    of each (upper-case suffixes too) decodes, and `image_files` (what every folder-reading command
    lists a folder with) picks up each."""
    from pipeline.common.image_codec import IMAGE_SUFFIXES
    from pipeline.common.image_sources import image_files

    registered = {ext for ext, fmt in Image.registered_extensions().items() if fmt in DECODED_FORMATS}
    common = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    assert common <= registered and common <= set(IMAGE_SUFFIXES)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, ext in enumerate(sorted(common)):
        name = f"img{i}{ext.upper() if i % 2 else ext}"
        Image.fromarray(rng_image(20, 24, seed=i)).save(folder / name, format=Image.registered_extensions()[ext])
        assert decode((folder / name).read_bytes()).size == (20, 24)
    assert len(image_files(folder)) == len(common)


def test_images_scikit_image_ships_load_by_name():
    from pipeline.common.image_sources import image_exists, load_image, load_style

    brick = load_image("skimage:brick")  # a greyscale texture: replicated to RGB
    assert brick.shape[0] == 3 and torch.equal(brick[0], brick[1]) and 0 <= brick.min() and brick.max() <= 1
    assert load_style("skimage:hubble_deep_field", 64).shape[-1] == 64 or load_style("skimage:hubble_deep_field", 64).shape[-2] == 64
    assert image_exists("skimage:grass") and not image_exists("skimage:no_such_image")
    with pytest.raises(ValueError, match="not an image scikit-image ships"):
        load_image("skimage:no_such_image")


def test_png_level_from_environment(monkeypatch):
    from pipeline.common.image_codec import encode

    torch.manual_seed(0)
    rgb = torch.rand(3, 64, 80)
    rgb[:, :32] = 0.5  # a flat half that deflate shrinks at any level
    sizes = {}
    for level in ("0", "1", "9"):
        monkeypatch.setenv("INSTYLE_PNG_LEVEL", level)
        data, kind = encode(rgb, None, "png")
        back = np.asarray(Image.open(io.BytesIO(data)))
        assert kind == "image/png" and np.array_equal(back, (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        sizes[level] = len(data)
    assert sizes["0"] > sizes["1"] >= sizes["9"]  # lossless at every level; only the bytes change
    for bad in ("10", "-1", "fast"):
        monkeypatch.setenv("INSTYLE_PNG_LEVEL", bad)
        with pytest.raises(ValueError, match="INSTYLE_PNG_LEVEL"):
            encode(rgb, None, "png")
