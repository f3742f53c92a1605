"""Animation and frame-folder files (`pipeline/tools/animations.py`) and the style grid's cells and
figure (`pipeline/quality/style_grid.py`)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.quality import style_grid
from pipeline.tools import animations
from pipeline.tools.models import load_model
from serving_helpers import encode_pil, make_checkpoint, rng_image
from tool_helpers import bt601_ycbcr, bt601_rgb

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


# ---- pipeline/tools/animations.py ---------------------------------------------------------------

def _frame(k: int, h: int = 12, w: int = 16, alpha: bool = False) -> np.ndarray:
    """A two-colour checkerboard (exact in a GIF palette), different for every k; alpha: left half opaque."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3), np.uint8)
    a[...] = (40 * k, 200 - 50 * k, 90)
    a[(yy // 4 + xx // 4) % 2 == 0] = (255, 255 - 60 * k, 30 * k)
    if alpha:
        a = np.concatenate([a, np.where(xx < w // 2, 255, 0).astype(np.uint8)[..., None]], -1)
    return a


def test_frame_folder_is_in_natural_order(tmp_path: Path) -> None:
    """frame_files: image files only (by suffix, any case; no folders, no other files), frame2
    before frame10, case-insensitive; an image-less folder is a ValueError."""
    names = ["f10.png", "f2.PNG", "F1.jpg", "f3.txt", "a1b10.webp", "a1b9.bmp", "notes.md"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "f0.png").mkdir()
    assert [p.name for p in animations.frame_files(tmp_path)] == ["a1b9.bmp", "a1b10.webp", "F1.jpg", "f2.PNG", "f10.png"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no frames"):
        animations.frame_files(tmp_path / "empty")


def test_output_name_keeps_writable_formats() -> None:
    """output_name: PNG/JPEG/WebP frames keep name and format; others become STEM.png."""
    assert animations.output_name(Path("d/f1.JPG")) == ("f1.JPG", "jpeg")
    assert animations.output_name(Path("f.jpeg")) == ("f.jpeg", "jpeg")
    assert animations.output_name(Path("f.webp")) == ("f.webp", "webp")
    assert animations.output_name(Path("f.png")) == ("f.png", "png")
    assert animations.output_name(Path("scan.001.tiff")) == ("scan.001.png", "png")
    assert animations.output_name(Path("f.bmp")) == ("f.png", "png")


@pytest.mark.parametrize("loop", [0, 3, None])
def test_gif_round_trip_keeps_frames_durations_and_loop(tmp_path: Path, loop: int | None) -> None:
    """AnimationWriter GIF → animation_info / animation_frames: the frame count, the loop count
    (None: plays once), each frame's duration and its exact pixels (as lossless PNG)."""
    writer = animations.AnimationWriter("GIF", loop)
    durations = [40, 120, 200]
    for k, ms in enumerate(durations):
        writer.add(_frame(k), ms)
    path = tmp_path / "a.gif"
    writer.save(path)
    assert animations.is_animated(path) and animations.animation_info(path) == (3, loop)
    frames = list(animations.animation_frames(path))
    assert [ms for _, ms in frames] == durations
    for k, (png, _) in enumerate(frames):
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and np.array_equal(np.asarray(im.convert("RGB")), _frame(k))


def test_gif_transparency_repeated_frames_and_missing_durations(tmp_path: Path) -> None:
    """RGBA frames keep their transparency in a GIF; identical consecutive frames merge with their
    durations added (same total time); frames without a delay read as DEFAULT_DURATION_MS."""
    writer = animations.AnimationWriter("GIF", 0)
    for k in range(2):
        writer.add(_frame(k, alpha=True), 80)
    writer.save(tmp_path / "t.gif")
    for k, (png, _) in enumerate(animations.animation_frames(tmp_path / "t.gif")):
        rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
        want = _frame(k, alpha=True)
        opaque = want[..., 3] == 255
        assert np.array_equal(rgba[opaque], want[opaque]) and (rgba[..., 3][~opaque] == 0).all()
    merged = animations.AnimationWriter("GIF", None)
    for k, ms in ((0, 100), (0, 100), (1, 50)):
        merged.add(_frame(k), ms)
    merged.save(tmp_path / "m.gif")
    assert [ms for _, ms in animations.animation_frames(tmp_path / "m.gif")] == [200, 50]
    Image.fromarray(_frame(0)).save(tmp_path / "n.gif", save_all=True, append_images=[Image.fromarray(_frame(1))])
    assert [ms for _, ms in animations.animation_frames(tmp_path / "n.gif")] == [animations.DEFAULT_DURATION_MS] * 2


def test_webp_round_trip_keeps_durations_and_loops_forever(tmp_path: Path) -> None:
    """AnimationWriter WEBP: frame count and durations exact, loop None written as 0 (forever),
    pixels close (lossy at the writer's quality)."""
    writer = animations.AnimationWriter("WEBP", None, quality=95)
    durations = [40, 130, 70]
    smooth = [np.clip(rng_image(32, 32, seed=0).astype(int) // 2 + 60 * k, 0, 255).astype(np.uint8) for k in range(3)]
    smooth = [np.asarray(Image.fromarray(f).resize((8, 8)).resize((32, 32), Image.BILINEAR)) for f in smooth]  # no noise
    for f, ms in zip(smooth, durations):
        writer.add(f, ms)
    writer.save(tmp_path / "a.webp")
    assert animations.is_animated(tmp_path / "a.webp") and animations.animation_info(tmp_path / "a.webp") == (3, 0)
    frames = list(animations.animation_frames(tmp_path / "a.webp"))
    assert [ms for _, ms in frames] == durations
    for k, (png, _) in enumerate(frames):
        got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
        errors = [np.abs(got - f).mean() for f in smooth]
        assert errors[k] < 4 and min(e for j, e in enumerate(errors) if j != k) > 20


def test_webp_animation_keeps_transparency(tmp_path: Path) -> None:
    """RGBA frames written as an animated WebP read back with their transparent half transparent."""
    writer = animations.AnimationWriter("WEBP", 0)
    for k in range(2):
        writer.add(_frame(k, 32, 32, alpha=True), 80)
    writer.save(tmp_path / "t.webp")
    for png, _ in animations.animation_frames(tmp_path / "t.webp"):
        alpha = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3]
        assert alpha[:, :16].min() > 200 and alpha[:, 16:].max() < 50


def test_non_animations_are_recognized_and_refused(tmp_path: Path) -> None:
    """is_animated: False for one-frame GIFs, other suffixes and unreadable files; animation_info:
    ValueError naming the real format, or saying the file is unreadable; the writer refuses other
    formats and an empty animation."""
    Image.fromarray(_frame(0)).save(tmp_path / "one.gif")
    Image.fromarray(_frame(0)).save(tmp_path / "still.png")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a not really")
    (tmp_path / "png.webp").write_bytes((tmp_path / "still.png").read_bytes())
    assert not any(animations.is_animated(tmp_path / n) for n in ("one.gif", "still.png", "broken.gif", "png.webp", "none.gif"))
    assert animations.animation_info(tmp_path / "one.gif") == (1, None)
    with pytest.raises(ValueError, match="is a PNG image, not a GIF or WebP animation"):
        animations.animation_info(tmp_path / "png.webp")
    with pytest.raises(ValueError, match="not a readable GIF/WebP animation"):
        animations.animation_info(tmp_path / "broken.gif")
    with pytest.raises(ValueError, match="use GIF or WEBP"):
        animations.AnimationWriter("PNG", None)
    with pytest.raises(ValueError, match="no frames"):
        animations.AnimationWriter("GIF", None).save(tmp_path / "empty.gif")


# ---- pipeline/quality/style_grid.py --------------------------------------------------------------

def test_grid_rows_cells_are_the_generators_outputs(tiny_trio: Path, tiny_trio_generator: nn.Module) -> None:
    """grid_rows on a 3-style strength model: the titles; per style, the photo, strengths 0 and 0.5,
    full strength, the 50/50 mix with the next style (cyclic) — each equal to the checkpoint's
    generator called with explicit weights — and the colour-preserved cell: the full-strength luma
    with the photo's chroma (BT.601, computed here), clamped to [0, 1]."""
    model, _ = load_model(tiny_trio)
    photo = torch.from_numpy(rng_image(20, 28, seed=3)).permute(2, 0, 1).float() / 255
    titles, rows = style_grid.grid_rows(model, photo)
    assert titles == ["photo", "strength 0", "strength 0.5", "style (strength 1)", "50/50 mix with next", "colours preserved"]
    assert len(rows) == 3 and all(len(r) == 6 and all(c.shape == (3, 20, 28) for c in r) for r in rows)
    mixes = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]
    with torch.no_grad():
        for k, row in enumerate(rows):
            one = [1.0 if i == k else 0.0 for i in range(3)]
            assert torch.equal(row[0], photo)
            for cell, weights, s in ((row[1], one, 0.0), (row[2], one, 0.5), (row[3], one, 1.0), (row[4], mixes[k], 1.0)):
                want = tiny_trio_generator(photo[None], torch.tensor([weights]), torch.tensor([s]))[0].clamp(0, 1)
                assert (cell - want).abs().max().item() < 1e-4, (k, weights, s)
            full, kept = row[3].double().numpy(), row[5].double().numpy()
            want = bt601_rgb(np.concatenate([bt601_ycbcr(full)[:1], bt601_ycbcr(photo.double().numpy())[1:]]))
            assert np.abs(kept - want.clip(0, 1)).max() < 1e-4
            inside = ((want > 0) & (want < 1)).all(axis=0)
            assert inside.mean() > 0.5  # most pixels unclamped: there the chroma is exactly the photo's
            assert np.abs(bt601_ycbcr(kept)[1:, inside] - bt601_ycbcr(photo.double().numpy())[1:, inside]).max() < 1e-4


def test_grid_rows_of_a_plain_model_have_no_strength_columns(tmp_path: Path) -> None:
    """A single-style model without the strength control: photo | style | mix (= the style: there is
    no next style) | colours preserved; strengths asked for are not shown."""
    model, _ = load_model(make_checkpoint(tmp_path / "plain", width=8, n_residual=1))
    photo = torch.from_numpy(rng_image(16, 20, seed=4)).permute(2, 0, 1).float() / 255
    titles, rows = style_grid.grid_rows(model, photo, (0.0, 0.5))
    assert titles == ["photo", "style", "50/50 mix with next", "colours preserved"] and len(rows) == 1
    with torch.no_grad():
        want = model(photo[None])[0].clamp(0, 1)
    assert torch.equal(rows[0][1], rows[0][2]) and (rows[0][1] - want).abs().max().item() < 1e-6


def test_style_grid_command_writes_the_figure(tiny_trio: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The command: a landscape photo scaled to the cell height, 6 columns × 3 styles with 4 px gaps
    under the title band; out-of-range strengths or an unloadable model exit 2."""
    from pipeline.quality.figures import LABEL_HEIGHT

    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_pil(rng_image(40, 56, seed=9)))
    out = tmp_path / "figs" / "grid.png"
    assert style_grid.command(model=tiny_trio, out=out, photo=str(photo), height=20) == 0
    assert Image.open(out).size == (6 * 28 + 5 * 4, LABEL_HEIGHT + 3 * 20 + 2 * 4)
    assert f"wrote {out} ({6 * 28 + 20}×{LABEL_HEIGHT + 68})" in capsys.readouterr().out
    assert style_grid.command(model=tiny_trio, out=tmp_path / "g.jpg", photo=str(photo), height=20, strengths=[1.5]) == 2
    assert style_grid.command(model=tmp_path / "missing.pt2", out=tmp_path / "g.jpg", photo=str(photo)) == 2
    assert style_grid.command(model=tiny_trio, out=tmp_path / "g.jpg", photo=str(tmp_path / "none.png")) == 2
    err = capsys.readouterr().err
    assert "each must be in [0, 1]" in err and err.count("error:") == 3 and not (tmp_path / "g.jpg").exists()


def test_style_grid_height_is_the_cell_height_for_portrait_photos(tiny_trio: Path, tmp_path: Path) -> None:
    """A portrait photo (56 high, 40 wide) with --height 20: cells 20 px high (as documented)."""
    from pipeline.quality.figures import LABEL_HEIGHT

    photo = tmp_path / "portrait.png"
    photo.write_bytes(encode_pil(rng_image(56, 40, seed=9)))
    assert style_grid.command(model=tiny_trio, out=tmp_path / "grid.png", photo=str(photo), height=20) == 0
    assert Image.open(tmp_path / "grid.png").height == LABEL_HEIGHT + 3 * 20 + 2 * 4
