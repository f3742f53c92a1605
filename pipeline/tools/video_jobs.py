"""The jobs behind `pipeline.tools.video.stylize_video`, one function per input → output kind.

Each reads frames, streams them through `frames.stylize_stream` (the image path, `batch` at a
time) and writes them to `tmp`, the temporary file or folder that `stylize_video` moves onto the
destination once the job returns.
"""
from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from pipeline.tools.animations import ANIMATED_SUFFIXES, AnimationWriter, animation_frames, animation_info, output_name
from pipeline.tools.frame_batches import Progress, opaque_uint8, rgb_image, stylize_stream
from pipeline.common.image_codec import BadImageRequest, DecodedImage, encode, to_uint8
from pipeline.serve.options import Options
from pipeline.serve.inference import prepare
from pipeline.serve.precision import DEFAULT_PRECISION
from pipeline.tools.video_io import Frame, VideoReader, VideoWriter

FRAME_NAME = "frame_{:06d}.png"  # a video's frames written to a folder: frame_000000.png is frame 0


@dataclass
class Job:
    """What every job needs: the model, the request options (`params` as sent, `options` resolved),
    the limits and the batching."""
    model: Any
    params: dict[str, str]
    options: Options
    batch: int
    max_side: int
    max_pixels: int
    max_memory_mb: int | None
    device: str | torch.device
    progress: bool
    precision: str = DEFAULT_PRECISION

    def stylize(self, items: Iterable[tuple[DecodedImage, Any]]) -> Iterator[tuple[torch.Tensor, DecodedImage, Any]]:
        return stylize_stream(self.model, items, self.options, self.batch, self.device, self.max_memory_mb,
                              self.precision)

    def decoded(self, data: bytes, name: str) -> DecodedImage:
        """An image file's bytes through the image CLI's `prepare`, errors naming the frame."""
        try:
            image, _ = prepare(data, self.params, self.max_side, self.max_pixels)
        except BadImageRequest as e:
            raise ValueError(f"{name}: {e}") from None
        return image


def video(job: Job, src: Path, dst: Path, tmp: Path, to_folder: bool) -> int:
    """A video → H.264 (`tmp` a file: timing, rotation, audio kept) or → PNG frames (`tmp` a folder)."""
    with VideoReader(src, job.max_pixels) as reader, closing(reader.items()) as items:  # closed before the log capture
        bar = Progress(reader.expected_frames, src.name, job.progress)
        relay = _AudioRelay(drop=to_folder)

        def frames() -> Iterator[tuple[DecodedImage, Frame]]:
            for item in items:
                if isinstance(item, Frame):
                    yield rgb_image(item.rgb, job.options), item
                else:
                    relay.push(item)

        count = 0
        try:
            for y, image, frame in job.stylize(frames()):
                if to_folder:  # what the image CLI writes for this frame as a PNG
                    (tmp / FRAME_NAME.format(count)).write_bytes(encode(y, None, "png")[0])
                else:
                    if relay.writer is None:  # the first frame says the size (after max_side) and the rotation
                        h, w = image.size
                        relay.start(VideoWriter(tmp, w, h, rate=reader.rate, time_base=reader.time_base,
                                                matrix=frame.matrix, sample_aspect_ratio=reader.sample_aspect_ratio,
                                                audio=reader.audio, target=dst))
                    relay.writer.write(opaque_uint8(y, image), frame.pts)
                count += 1
                bar.update()
            if relay.writer is not None:
                relay.writer.close()
        except BaseException:
            if relay.writer is not None:
                relay.writer.abort()
            raise
        finally:
            bar.close()
        return count


class _AudioRelay:
    """Audio packets read before the output exists (it needs the first stylized frame) wait here;
    later ones go straight to the muxer, which interleaves them with the video by time."""

    def __init__(self, drop: bool) -> None:
        self.writer: VideoWriter | None = None
        self.pending: list[Any] = []
        self.drop = drop  # frames to a folder: no audio to write

    def push(self, packet: Any) -> None:
        if self.drop:
            return
        if self.writer is None:
            self.pending.append(packet)
        else:
            self.writer.copy_audio(packet)

    def start(self, writer: VideoWriter) -> None:
        self.writer = writer
        for packet in self.pending:
            writer.copy_audio(packet)
        self.pending.clear()


def animation(job: Job, src: Path, tmp: Path) -> int:
    """An animated GIF/WebP → the same kind, with the input's frame durations and loop count."""
    count, loop = animation_info(src)
    writer = AnimationWriter(ANIMATED_SUFFIXES[src.suffix.lower()], loop, job.options.quality)
    items = ((job.decoded(png, f"{src} frame {k}"), ms) for k, (png, ms) in enumerate(animation_frames(src)))
    bar = Progress(count, src.name, job.progress)
    try:
        for y, image, ms in job.stylize(items):
            writer.add(to_uint8(y if image.alpha is None else torch.cat([y, image.alpha])), ms)  # alpha kept
            bar.update()
    finally:
        bar.close()
    writer.save(tmp)
    return len(writer.frames)


def frames_to_video(job: Job, files: list[Path], dst: Path, tmp: Path, fps: float) -> int:
    """A folder's frames (all one size), in the given order → H.264 at `fps`, no audio."""
    rate = Fraction(fps).limit_denominator(100_000)
    items = ((job.decoded(p.read_bytes(), str(p)), (k, p)) for k, p in enumerate(files))
    bar = Progress(len(files), dst.name, job.progress)
    writer, size = None, None
    try:
        for y, image, (k, path) in job.stylize(items):
            h, w = image.size
            if writer is None:
                writer, size = VideoWriter(tmp, w, h, rate=rate, time_base=1 / rate, target=dst), (h, w)
            elif (h, w) != size:
                raise ValueError(f"{path}: frame is {w}×{h}, the first frame {files[0].name} is {size[1]}×{size[0]}; "
                                 "a video's frames must all have one size")
            writer.write(opaque_uint8(y, image), k)
            bar.update()
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    return writer.frames


def frames_to_folder(job: Job, files: list[Path], tmp: Path) -> int:
    """A folder's frames → a folder: the same names and formats (STEM.png where the image path cannot
    write the format), each as the image CLI writes it."""
    names = [output_name(p) for p in files]
    seen: dict[str, Path] = {}
    for path, (name, _) in zip(files, names):  # e.g. a.bmp and a.png: never overwrite one with the other
        if name in seen:
            raise ValueError(f"{path} and {seen[name]} would both be written as {name}")
        seen[name] = path
    items = ((job.decoded(p.read_bytes(), str(p)), n) for p, n in zip(files, names))
    bar = Progress(len(files), files[0].parent.name, job.progress)
    try:
        for y, image, (name, fmt) in job.stylize(items):
            (tmp / name).write_bytes(encode(y, image.alpha, fmt, job.options.quality)[0])  # as `finish` does
            bar.update()
    finally:
        bar.close()
    return len(files)
