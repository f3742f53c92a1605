"""Video files through PyAV: decoded RGB frames with their timestamps, and an H.264 writer that keeps
the input's timing, display rotation and audio (copied packet for packet, never re-encoded).

PyAV is imported inside functions only: this package is bundled whole into TorchServe archives,
which never read video (`pip install -e '.[video]'` installs it).

Choices, each for a reason:
- Frames are decoded to 8-bit RGB (`rgb24`, using the stream's own colour matrix and range), the
  array a lossless PNG of that frame would hold, so a frame stylizes exactly like that PNG.
- Output: libx264, CRF 18, `yuv420p` (what every player decodes). 4:2:0 has one chroma sample per
  2×2 pixels and H.264 crops only in whole chroma samples, so an odd width or height cannot be
  stored as 4:2:0 at all; such frames are encoded as `yuv444p` (High 4:4:4 profile) at their exact
  size rather than padded, scaled or cropped. ffmpeg, VLC, mpv and Chrome play it; some hardware
  players and Safari do not.
- RGB → YUV with BT.709 (the sRGB primaries), limited range, and the stream tagged so.
- Timestamps: the output stream and encoder use the input's time base and each frame keeps its
  presentation timestamp, so constant and variable frame rates come out the same.
- Rotation: the input's display matrix (from the decoded frame's side data) is written unchanged,
  so players turn the stylized frames as they turned the input (the pixels are stylized as stored).
"""
from __future__ import annotations

import struct
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

VIDEO_SUFFIXES = (".avi", ".m4v", ".mkv", ".mov", ".mp4", ".webm")  # read by PyAV
H264_SUFFIXES = (".mkv", ".mov", ".mp4")  # written: containers that hold H.264 and the usual audio codecs
CRF = "18"  # x264 constant quality: stylized textures are busy, the default 23 smears them
_BT709 = 1  # AVCOL_SPC_BT709 / AVCOL_PRI_BT709 / AVCOL_TRC_BT709
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG


def import_av() -> Any:
    """The `av` module, or a ValueError saying how to install it."""
    try:
        import av
    except ImportError:
        raise ValueError("video needs PyAV: pip install -e '.[video]' (av==18.1.0)") from None
    return av


@contextmanager
def ffmpeg_log() -> Iterator[list]:
    """FFmpeg's error messages kept (not printed) while the body runs, so PyAV's exceptions say
    what went wrong ("last error log: ...") instead of a bare errno."""
    av = import_av()
    previous, repeats = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # else a message seen in an earlier run is swallowed in this one
    try:
        with av.logging.Capture() as logs:
            yield logs
    finally:
        av.logging.set_level(previous)
        av.logging.set_skip_repeated(repeats)


@dataclass
class Frame:
    """One decoded frame: (H, W, 3) uint8 RGB, its timestamp (in the stream's time base) and the
    display matrix it carries (9 ints, or None)."""
    rgb: np.ndarray
    pts: int
    matrix: tuple[int, ...] | None


def display_matrix(frame: Any) -> tuple[int, ...] | None:
    """The frame's DISPLAYMATRIX side data as 9 int32 (FFmpeg attaches the stream's to every frame)."""
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX":
            raw = bytes(data)
            if len(raw) == 36:
                return struct.unpack("=9i", raw)
    return None


class VideoReader:
    """An open video: `items()` yields `Frame`s in presentation order and the audio packets as they
    come in the file, so a writer can copy the audio while frames stream by in bounded memory."""

    def __init__(self, path: Path, max_pixels: int):
        av = import_av()
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as e:
            raise ValueError(f"{self.path}: not a readable video file ({_reason(e)})") from None
        try:
            if not self.container.streams.video:
                kinds = ", ".join(s.type for s in self.container.streams) or "none"
                raise ValueError(f"{self.path}: has no video stream (streams: {kinds})")
            self.video = self.container.streams.video[0]
            ctx = self.video.codec_context
            if ctx is None:  # PyAV found no decoder for the stream's codec
                raise ValueError(f"{self.path}: its video codec cannot be decoded by this FFmpeg build "
                                 f"(PyAV {av.__version__})")
            if not ctx.width or not ctx.height:
                raise ValueError(f"{self.path}: its {ctx.name} video stream declares no frame size")
            if ctx.width * ctx.height > max_pixels:
                raise ValueError(f"{self.path}: frames are {ctx.width}×{ctx.height}, over the "
                                 f"{max_pixels / 1e6:.1f} MP limit")
            self.audio = list(self.container.streams.audio)
            self.time_base: Fraction = self.video.time_base or Fraction(1, 90000)
            self.rate: Fraction = self.video.average_rate or self.video.guessed_rate or Fraction(25)
            self.sample_aspect_ratio = ctx.sample_aspect_ratio
            self.expected_frames = int(self.video.frames or 0)  # 0: the container does not say
            self.video.thread_type = "AUTO"  # decode on every core, frame-threaded
        except BaseException:
            self.container.close()
            raise

    def items(self) -> Iterator[Frame | Any]:
        """`Frame`s and audio packets (av.Packet), in file order; ValueError on damaged data."""
        av = import_av()
        tick = max(1, round(1 / (self.rate * self.time_base)))  # one frame in time-base units
        last, count = None, 0
        with ffmpeg_log() as logs:
            try:
                for packet in self.container.demux(self.video, *self.audio):
                    if packet.stream.type == "audio":
                        if packet.dts is not None:  # dts None: demux's end-of-stream marker, not data
                            yield packet
                        continue
                    for frame in packet.decode():
                        # Containers without timestamps (some AVI) or repeated ones: one frame later.
                        pts = frame.pts if frame.pts is not None and (last is None or frame.pts > last) else \
                            (0 if last is None else last + tick)
                        last, count = pts, count + 1
                        yield Frame(frame.to_ndarray(format="rgb24"), pts, display_matrix(frame))
            except av.FFmpegError as e:
                raise ValueError(f"{self.path}: damaged video data after frame {count} ({_reason(e)})") from None
            # The demuxer reports a cut-off file ("File ended prematurely") as an error message and
            # then just ends: without this check a truncated Matroska file would pass as a short one.
            cut = [text.strip() for level, name, text in logs
                   if name == self.container.format.name and level <= av.logging.ERROR]
        if cut:
            raise ValueError(f"{self.path}: truncated or damaged file after frame {count} ({cut[0]})")
        if count == 0:
            raise ValueError(f"{self.path}: no frame could be decoded from the video stream")
        if self.expected_frames and count < self.expected_frames:
            raise ValueError(f"{self.path}: truncated: the header promises {self.expected_frames} frames, "
                             f"only {count} could be decoded")

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class VideoWriter:
    """H.264 into .mp4/.mkv/.mov: the given time base, frame rate, pixel aspect and display matrix, and
    the `audio` streams of an input (`VideoReader.audio`) to be copied packet for packet."""

    def __init__(self, path: Path, width: int, height: int, *, rate: Fraction, time_base: Fraction,
                 matrix: tuple[int, ...] | None = None, sample_aspect_ratio: Fraction | None = None,
                 audio: Sequence[Any] = (), target: Path | None = None):
        """`path`: the file written; `target`: the name errors give (the final name of a temporary file)."""
        av = import_av()
        self.path, self.target = Path(path), Path(target or path)
        self.out = av.open(str(self.path), "w")
        try:
            v = self.out.add_stream("libx264", rate=rate, options={"crf": CRF})  # stream 0, as players expect
            v.width, v.height = width, height
            v.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            v.time_base = time_base
            ctx = v.codec_context
            ctx.time_base = time_base
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
            ctx.color_range = _LIMITED_RANGE
            if sample_aspect_ratio:
                ctx.sample_aspect_ratio = sample_aspect_ratio
            if matrix is not None:
                v.set_display_matrix(list(matrix))
            self.audio = {stream.index: self.out.add_stream_from_template(stream) for stream in audio}
            self.video, self.time_base, self.frames = v, time_base, 0
            try:
                self.out.start_encoding()  # the header now: a codec the container refuses fails here
            except av.FFmpegError as e:
                codecs = " + ".join(["h264"] + [getattr(s.codec_context, "name", "audio") for s in audio])
                raise ValueError(f"{self.target}: cannot write {codecs} into a {self.path.suffix} file "
                                 f"({_reason(e)}); .mkv holds nearly any codec") from None
        except BaseException:
            self.abort()
            raise

    def write(self, rgb: np.ndarray, pts: int) -> None:
        """One (H, W, 3) uint8 RGB frame shown at `pts` (input time base)."""
        av = import_av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format=self.video.pix_fmt, dst_colorspace="itu709", dst_color_range="MPEG")
        frame.pts, frame.time_base = pts, self.time_base
        with self._errors("encoding"):
            self.out.mux(self.video.encode(frame))
        self.frames += 1

    def copy_audio(self, packet: Any) -> None:
        """An input audio packet, unchanged, into its output stream (the muxer interleaves by time)."""
        packet.stream = self.audio[packet.stream.index]
        with self._errors("copying audio"):
            self.out.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        with self._errors("finishing"):
            try:
                self.out.mux(self.video.encode(None))
            finally:
                self.out.close()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        av = import_av()
        try:
            yield
        except av.FFmpegError as e:
            raise ValueError(f"{self.target}: {doing} failed after {self.frames} frames ({_reason(e)})") from None

    def abort(self) -> None:
        """Close without flushing (the file is discarded by the caller)."""
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - an already broken muxer; the partial file is deleted anyway
            pass


def _reason(e: BaseException) -> str:
    """An FFmpeg error's own words and FFmpeg's last logged message (see `ffmpeg_log`), without the
    file name PyAV adds (a temporary file's, for outputs)."""
    text = getattr(e, "strerror", None) or str(e)
    _, found, log = str(e).partition("last error log: ")
    return f"{type(e).__name__}: {text}" + (f"; {log.strip()}" if found else "")
