"""Animation and frame-folder files (`pipeline/tools/animations.py`)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.tools import animations
from serving_helpers import rng_image

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


def _frame(k: int, h: int = 12, w: int = 16, alpha: bool = False) -> np.ndarray:
    """A two-colour checkerboard (exact in a GIF palette), different for every k; alpha: left half opaque."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3), np.uint8)
    a[...] = (40 * k, 200 - 50 * k, 90)
    a[(yy // 4 + xx // 4) % 2 == 0] = (255, 255 - 60 * k, 30 * k)
    if alpha:
        a = np.concatenate([a, np.where(xx < w // 2, 255, 0).astype(np.uint8)[..., None]], -1)
    return a


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
