"""Helpers of the video tests (no tests here): a moving test pattern and a real H.264 clip made from it."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def pattern(k: int, h: int, w: int) -> np.ndarray:
    """Frame k of a moving colour pattern with some texture (uint8 RGB)."""
    ys, xs = np.mgrid[0:h, 0:w]
    rgb = [128 + 90 * np.sin((xs + 3 * k) / 6.0 + c) * np.cos((ys - 2 * k) / 5.0 - c) for c in (0.0, 1.3, 2.6)]
    noise = np.random.default_rng(k).normal(0, 6, (h, w, 3))
    return np.clip(np.stack(rgb, -1) + noise, 0, 255).astype(np.uint8)


def make_clip(path: Path, w: int = 65, h: int = 37, n: int = 12, fps: int = 10, audio: str | None = "aac",
              rotation: int | None = 90) -> Path:
    """A real H.264 clip (4:4:4 when a side is odd, as 4:2:0 cannot hold it) with a sine audio track."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps, options={"crf": "12"})
    v.width, v.height, v.pix_fmt = w, h, "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
    if rotation is not None:
        v.set_display_rotation(rotation)
    a = None
    if audio:
        rate = 48000 if audio == "libopus" else 16000
        a = out.add_stream(audio, rate=rate)
        a.layout = "mono"
    for k in range(n):
        frame = av.VideoFrame.from_ndarray(pattern(k, h, w), format="rgb24")
        frame.pts = k
        out.mux(v.encode(frame))
    if a is not None:
        chunk = 960 if audio == "libopus" else 1024
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate * n // fps) / rate)).astype(np.float32)[None]
        for s in range(0, samples.shape[1], chunk):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, s:s + chunk]),
                                            format="flt" if audio == "libopus" else "fltp", layout="mono")
            af.sample_rate, af.pts = rate, s
            out.mux(a.encode(af))
        out.mux(a.encode())
    out.mux(v.encode())
    out.close()
    return path
