"""`python -m pipeline stylize`: file and folder mode, each answer against Pillow + the eager generator."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from pipeline.__main__ import main as cli
from serving_helpers import decode_pil, encode_pil, reference_output, rng_image, shared_export

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The shared run: its checkpoint and a .pt export."""
    return shared_export(tmp_path_factory, formats=("pt",))


@pytest.fixture(scope="module")
def every_form(tmp_path_factory):
    """The shared run exported in every format (~20 s: for the slow tier's tests of the .pt2)."""
    return shared_export(tmp_path_factory)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_file_mode_writes_the_stylized_photo_in_the_suffixs_format(run, tmp_path, fmt):
    """The CLI's answer against Pillow + the eager generator (serving_helpers.reference_output): a PNG
    keeps the alpha within a level; a .jpg is a JPEG at --quality (Pillow's tables for that quality) of
    the stylized photo composited over white (Pillow's JPEG of that, within 2 levels on average)."""
    from PIL import Image

    data = encode_pil(rng_image(37, 53, channels=4, seed=5))
    (tmp_path / "photo.png").write_bytes(data)
    dst = tmp_path / f"out.{'jpg' if fmt == 'jpeg' else 'png'}"
    args = ["--model", str(run / "export" / "generator.pt"), str(tmp_path / "photo.png"), str(dst)]
    if fmt == "jpeg":
        args = ["--quality", "85"] + args  # format inferred from the .jpg suffix
    assert cli(["stylize", *args]) == 0
    want = reference_output(run, data).astype(float)
    got = decode_pil(dst.read_bytes())
    if fmt == "png":
        assert got.mode == "RGBA" and np.abs(np.asarray(got, float) - want).max() <= 1
        return
    over_white = (want[..., :3] * want[..., 3:] / 255 + 255 * (1 - want[..., 3:] / 255)).round().astype(np.uint8)
    with Image.open(io.BytesIO(encode_pil(over_white, "JPEG", quality=85))) as pil85:
        assert got.format == "JPEG" and got.quantization == pil85.quantization
        # the CLI composites in float, the reference its rounded pixels: a level apart before the codec, which
        # spreads that to ~1 level on average (its own loss on this busy texture: ~5)
        assert np.abs(np.asarray(got, float) - np.asarray(pil85, float)).mean() < 2


@pytest.mark.slow
def test_ckpt_and_pt2_models_give_the_same_pixels(every_form, tmp_path):
    run = every_form
    src = tmp_path / "in.jpg"
    src.write_bytes(encode_pil(rng_image(41, 30, seed=6), "JPEG", quality=92))
    outs = {}
    for name, model in [("pt", run / "export" / "generator.pt"), ("pt2", run / "export" / "generator.pt2"),
                        ("ckpt", run / "checkpoints" / "last.ckpt")]:
        assert cli(["stylize", "--model", str(model), str(src), str(tmp_path / f"{name}.png")]) == 0
        outs[name] = np.asarray(decode_pil((tmp_path / f"{name}.png").read_bytes())).astype(int)
    assert outs["pt"].shape == (41, 30, 3)
    assert np.abs(outs["pt"] - outs["ckpt"]).max() <= 1 and np.abs(outs["pt2"] - outs["ckpt"]).max() <= 1


def test_folder_mode_skips_bad_files_and_fails(run, tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    images = {"a.jpg": encode_pil(rng_image(21, 34, seed=7), "JPEG"), "b.png": encode_pil(rng_image(16, 16, 4, seed=8)),
              "c.webp": encode_pil(rng_image(30, 12, seed=9), "WEBP"), "broken.png": b"\x89PNG garbage"}
    for name, data in images.items():
        (src / name).write_bytes(data)
    (src / "notes.txt").write_text("not an image, not considered")
    code = cli(["stylize", "--model", str(run / "export" / "generator.pt"), "--max_side", "20", str(src), str(dst)])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot decode" in err
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "b.png", "c.png"]
    # the longer side brought down to 20, the aspect ratio kept; the 16 px one untouched (Pillow + the eager
    # generator: serving_helpers.reference_output), its alpha kept
    sizes = {name: decode_pil((dst / (name.split(".")[0] + ".png")).read_bytes()).size for name in images if name != "broken.png"}
    assert sizes == {"a.jpg": (20, 12), "b.png": (16, 16), "c.webp": (8, 20)}
    small = np.asarray(decode_pil((dst / "b.png").read_bytes()), int)
    assert np.abs(small - reference_output(run, images["b.png"]).astype(int)).max() <= 1


def test_folder_mode_all_good_exits_zero(run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.png").write_bytes(encode_pil(rng_image(9, 11)))
    assert cli(["stylize", "--model", str(run / "export" / "generator.pt"), "--format", "webp", str(src),
                         str(tmp_path / "out")]) == 0
    assert decode_pil((tmp_path / "out" / "x.webp").read_bytes()).size == (11, 9)


def test_usage_errors(run, tmp_path, capsys):
    assert cli(["stylize", "--model", str(tmp_path / "none.pt"), str(tmp_path), str(tmp_path / "o")]) == 2
    assert cli(["stylize", "--model", str(run / "export" / "generator.pt"), str(tmp_path / "missing.png"),
                         str(tmp_path / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point(run, tmp_path):
    src = tmp_path / "i.png"
    src.write_bytes(encode_pil(rng_image(12, 13)))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "stylize", "--model", str(run / "export" / "generator.pt"),
                           str(src), str(tmp_path / "o.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert decode_pil((tmp_path / "o.png").read_bytes()).size == (13, 12)


@pytest.mark.slow
def test_options_may_be_spelled_with_dashes(every_form, tmp_path):
    """`--preserve-color` / `--max-side` (the issue's and curl's spelling) are the same options as
    `--preserve_color` / `--max_side`: the same bytes come out."""
    src = tmp_path / "in.png"
    src.write_bytes(encode_pil(rng_image(40, 60, seed=7)))
    model = str(every_form / "export" / "generator.pt2")
    assert cli(["stylize", "--model", model, "--preserve_color", "true", "--max_side=32", str(src), str(tmp_path / "a.png")]) == 0
    assert cli(["stylize", "--model", model, "--preserve-color", "true", "--max-side=32", str(src), str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert decode_pil((tmp_path / "a.png").read_bytes()).size == (32, 21)


@pytest.mark.parametrize("kind", ["plain", pytest.param("plain-pt2", marks=pytest.mark.slow), "styles"])
def test_the_serving_path_matches_an_independent_computation(request, run, tmp_path, kind):
    """`stylize_bytes` (decode, options, the inference form, colours, encode) against Pillow + the
    checkpoint's eager generator in its training form, for every kind of input and option: RGB, RGBA
    (alpha kept), greyscale, a style mix at a strength, colours preserved. The plain model is the shared
    `.pt` export (its `.pt2`, what TorchServe serves: the slow tier's); the 3-style one is loaded from its
    checkpoint (its exports: test_export.py)."""
    from pipeline.serve.model_io import load_model
    from pipeline.tools.stylize import stylize_bytes
    from serving_helpers import make_checkpoint

    if kind == "styles":
        run = tmp_path / kind
        make_checkpoint(run, width=8, n_residual=2, styles=["a", "b", "c"], strength=True)
    if kind == "plain-pt2":
        run = request.getfixturevalue("every_form")
    form = {"plain": "export/generator.pt", "plain-pt2": "export/generator.pt2", "styles": "checkpoints/last.ckpt"}[kind]
    model, _ = load_model(run / form)
    cases = [(encode_pil(rng_image(37, 53, seed=1)), {}, {}),
             (encode_pil(rng_image(29, 41, channels=4, seed=2)), {}, {}),
             (encode_pil(rng_image(33, 20, seed=3), "PNG", mode="L"), {}, {}),
             (encode_pil(rng_image(40, 40, seed=4)), {"preserve_color": "true"}, {"preserve_color": True})]
    if kind == "styles":
        cases += [(encode_pil(rng_image(35, 47, seed=5)), {"style": "a:0.25,c:0.75", "strength": "0.3"},
                   {"style": {"a": 0.25, "c": 0.75}, "strength": 0.3}),
                  (encode_pil(rng_image(35, 47, seed=6)), {"style": "b", "strength": "0"}, {"style": {"b": 1}, "strength": 0.0})]
    for data, params, reference in cases:
        got = np.asarray(decode_pil(stylize_bytes(model, data, params)[0])).astype(int)
        want = reference_output(run, data, **reference).astype(int)
        assert got.shape == want.shape, params
        assert np.abs(got - want).max() <= 1, params
