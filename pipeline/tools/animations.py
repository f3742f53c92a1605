"""Frames that live in image files: animated GIF / WebP (Pillow) and folders of numbered frames.

Each frame is handed on as the bytes of a lossless PNG (an animation's frame) or as the file's own
bytes (a folder's frame), so `pipeline.serve.inference.prepare` decodes it exactly as the image CLI
would decode that picture.

Animated output is assembled in memory as 8-bit frames: Pillow's GIF and WebP writers need every
frame before they write (they diff and palette frames against each other). Pillow's GIF writer
merges a frame identical to the one before it into that frame (durations added), so a clip with
repeated frames comes back with fewer, longer frames and the same total time.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError


ANIMATED_SUFFIXES = {".gif": "GIF", ".webp": "WEBP"}
# A folder's frame keeps its name and format when the image path can write it; others become STEM.png.
FRAME_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
DEFAULT_DURATION_MS = 100  # a GIF frame without a delay: what browsers show it for


def is_animated(path: Path) -> bool:
    """Whether `path` is a GIF or WebP with more than one frame (False when it cannot be read:
    the image path then reports why)."""
    if Path(path).suffix.lower() not in ANIMATED_SUFFIXES:
        return False
    try:
        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False))
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def animation_info(path: Path) -> tuple[int, int | None]:
    """(frames, loop) of an animated GIF/WebP; loop None = plays once, 0 = forever, n = n repeats."""
    try:
        with Image.open(path) as im:
            if im.format not in ANIMATED_SUFFIXES.values():
                raise ValueError(f"{path}: is a {im.format} image, not a GIF or WebP animation")
            return int(getattr(im, "n_frames", 1)), im.info.get("loop")
    except (OSError, UnidentifiedImageError, EOFError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable GIF/WebP animation ({type(e).__name__}: {e})") from None


def animation_frames(path: Path) -> Iterator[tuple[bytes, int]]:
    """(lossless PNG bytes of the whole frame as shown, duration in ms) per frame, in order."""
    count, _ = animation_info(path)
    with Image.open(path) as im:
        for k in range(count):
            try:
                im.seek(k)
                frame = im.copy()  # the composited canvas (Pillow applies GIF disposal and WebP blending)
            except (OSError, EOFError, ValueError, SyntaxError) as e:
                raise ValueError(f"{path}: frame {k} of {count} cannot be read ({type(e).__name__}: {e})") from None
            buf = io.BytesIO()
            frame.save(buf, format="PNG", compress_level=1)  # lossless: any level decodes to the same pixels
            yield buf.getvalue(), int(im.info.get("duration") or DEFAULT_DURATION_MS)


class AnimationWriter:
    """Collects stylized frames (uint8 RGB or RGBA) and writes one animated GIF or WebP."""

    def __init__(self, fmt: str, loop: int | None, quality: int = 90):
        if fmt not in ANIMATED_SUFFIXES.values():
            raise ValueError(f"animation format {fmt!r}: use GIF or WEBP")
        self.fmt, self.loop, self.quality = fmt, loop, quality
        self.frames: list[Image.Image] = []
        self.durations: list[int] = []

    def add(self, rgba: np.ndarray, duration_ms: int) -> None:
        """One (H, W, 3|4) uint8 frame shown for `duration_ms`."""
        self.frames.append(Image.fromarray(rgba, mode="RGBA" if rgba.shape[2] == 4 else "RGB"))
        self.durations.append(int(duration_ms))

    def save(self, path: Path) -> None:
        if not self.frames:
            raise ValueError("no frames to write")
        kwargs: dict = {"save_all": True, "append_images": self.frames[1:], "duration": self.durations}
        if self.fmt == "GIF":
            if self.loop is not None:  # absent: the input played once, so does the output
                kwargs["loop"] = self.loop
            if any(f.mode == "RGBA" for f in self.frames):
                kwargs["disposal"] = 2  # full transparent frames: clear, so earlier ones do not show through
        else:
            kwargs.update(loop=self.loop or 0, quality=self.quality)
            if any(f.mode == "RGBA" for f in self.frames):
                kwargs["allow_mixed"] = True  # Pillow's lossy animated WebP writes no alpha without it
        self.frames[0].save(path, format=self.fmt, **kwargs)


def output_name(path: Path) -> tuple[str, str]:
    """(output file name, format) of a folder's frame: same name and format, or STEM.png."""
    fmt = FRAME_FORMATS.get(path.suffix.lower())
    return (path.name, fmt) if fmt else (path.stem + ".png", "png")
