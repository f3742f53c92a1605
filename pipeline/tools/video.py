"""Stylize a film frame by frame, each frame exactly as the image CLI stylizes one picture.

    video (.mp4 .mov .mkv .avi .webm .m4v)  →  H.264 .mp4 / .mkv / .mov: same frame timestamps (so
                                              frame rate), size, display rotation; audio copied
                                           →  a folder: frame_000000.png, ... (no audio)
    animated GIF / WebP                      →  the same kind: same frame durations and loop count
    folder of frames                         →  H.264 video at `fps` (frames in natural name order),
                                              or a folder: same names and formats (STEM.png for
                                              formats the image path cannot write)

Frames stream through in batches of `batch` (memory bounded by one batch and the encoder's
look-ahead, whatever the length; animations are the exception, see `pipeline.tools.animations`).
Every frame goes through the image path (`frames.stylize_stream`: the options, resize, model call and colour
preservation of `pipeline.serve.inference`), so with `batch=1` frame k of the output is, before
video encoding, the image CLI's output on frame k saved as a PNG (a video → folder job writes
exactly those PNGs). Output goes through `pipeline.common.files.atomic_write`: it replaces the
destination only when complete, so a failed or interrupted run never leaves a partial file in
its place. Video I/O needs PyAV (the `video` extra), imported only when a video is read or written.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from pipeline.common.files import atomic_write
from pipeline.common.image_sources import image_files
from pipeline.tools import video_jobs
from pipeline.tools.animations import ANIMATED_SUFFIXES, is_animated
from pipeline.tools.frame_batches import frame_options
from pipeline.serve.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from pipeline.serve.precision import DEFAULT_PRECISION
from pipeline.tools.video_io import H264_SUFFIXES, VIDEO_SUFFIXES, ffmpeg_log


def job_kind(src: Path, dst: Path) -> str | None:
    """'video', 'video-to-frames', 'animation' or 'frames-to-video': what `stylize_video` does with
    `src` → `dst`; None when `src` is a plain image, or a folder going to a folder (the image CLI's
    own modes; `stylize_video` does those as 'frames-to-folder'). ValueError for a combination it
    cannot write."""
    src, dst = Path(src), Path(dst)
    out = dst.suffix.lower()
    if src.is_dir():
        return "frames-to-video" if out in H264_SUFFIXES else None
    suffix = src.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        if out in H264_SUFFIXES:
            return "video"
        if dst.is_dir() or not out:
            return "video-to-frames"
        raise ValueError(f"a video's output must be {', '.join(H264_SUFFIXES)} (H.264) or a folder, not {dst.name!r}")
    if suffix in ANIMATED_SUFFIXES and is_animated(src):
        if ANIMATED_SUFFIXES.get(out) != ANIMATED_SUFFIXES[suffix]:
            raise ValueError(f"an animated {suffix} is written as the same kind: give OUTPUT a {suffix} suffix")
        return "animation"
    return None


def stylize_video(model: Any, src: str | Path, dst: str | Path, *, params: dict[str, str], batch: int = 4,
                  max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_memory_mb: int | None = None, device: str | torch.device = "cpu", fps: float = 25.0,
                  progress: bool = True, precision: str = DEFAULT_PRECISION) -> int:
    """Stylize a video, an animation or a folder of frames (see the module docstring) into `dst`;
    returns the number of frames written. `params` are the image CLI's request options (style,
    strength, preserve_color, max_side, quality); `max_side` is the server's cap on them.
    ValueError (naming the file and the problem) for input that cannot be read or written;
    FileNotFoundError for a folder without frames."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise ValueError(f"{src} does not exist")
    kind = job_kind(src, dst) or ("frames-to-folder" if src.is_dir() else None)
    if kind is None:
        raise ValueError(f"{src}: not a video, an animated GIF/WebP or a folder of frames")
    if batch < 1:
        raise ValueError(f"batch={batch}: give at least 1 frame per model call")
    if not fps > 0:
        raise ValueError(f"fps={fps}: give a positive frame rate")
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the output must differ from the input")
    job = video_jobs.Job(model, dict(params), frame_options(params, max_side, getattr(model, "instyle_controls", None)),
                         batch, max_side, max_pixels, max_memory_mb, device, progress, precision)
    with _replaced_on_success(dst, folder=kind in ("video-to-frames", "frames-to-folder")) as tmp:
        if kind in ("video", "video-to-frames"):
            with ffmpeg_log():
                return video_jobs.video(job, src, dst, tmp, to_folder=kind == "video-to-frames")
        if kind == "animation":
            return video_jobs.animation(job, src, tmp)
        if kind == "frames-to-video":
            with ffmpeg_log():
                return video_jobs.frames_to_video(job, image_files(src, natural=True), dst, tmp, fps)
        return video_jobs.frames_to_folder(job, image_files(src, natural=True), tmp)


@contextmanager
def _replaced_on_success(dst: Path, folder: bool) -> Iterator[Path]:
    """`atomic_write` of `dst` (a file, or a folder whose files are moved in when all are written),
    refused when `dst` exists as the other kind."""
    if dst.exists() and dst.is_dir() != folder:
        raise ValueError(f"{dst} exists and is {'a file' if folder else 'a folder'}")
    with atomic_write(dst, folder=folder) as tmp:
        yield tmp

