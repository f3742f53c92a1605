"""Video worker: frames/s of the served model on video frames, in its own process.

    python -m benchmarks.video --run RUN --size 640x360 [--batches 1,4] [--frames 16] [--device cpu|cuda]
    python -m benchmarks.video --run RUN --size 640x360 --end-to-end --frames 48 --work DIR

Per-frame mode: the exported `.pt2` loaded by `pipeline.serve.model_io.load_model`, and frames of
(H, W, 3) uint8 RGB (what the decoder hands over) through exactly the path `stylize_video` runs
for each frame: `frames.rgb_image` → `frames.stylize_stream` (`run_batch`, `batch` frames per call
within the memory cap, frame by frame over it) → `frames.opaque_uint8`. Decoding and encoding are
left out. `--precision` (default `auto`, what `stylize` and the server run: bf16 convolutions on a
CPU with native bf16, else fp32) is that of `pipeline.serve.precision`; the row names the one run.

End-to-end mode: a clip of `--frames` frames written with PyAV (H.264, CRF 18, 25 fps, no audio),
then `pipeline.tools.video.stylize_video` on it (decode + stylize + H.264 encode, batch 4, the
`stylize` command's defaults), and apart from it decode alone and encode alone of the same frames.

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import peak_rss_mb, photo_uint8
from pipeline.serve.precision import CHOICES, resolve_precision

PARAMS = {"format": "png", "preserve_color": "false"}  # the request options `stylize` sends by default


def frames_uint8(n: int, h: int, w: int) -> list[np.ndarray]:
    """`n` different (h, w, 3) uint8 frames (content does not change the speed; made before timing)."""
    return [photo_uint8(h, w, seed=k) for k in range(n)]


def stylize_frames(model: Any, frames: list[np.ndarray], batch: int, device: str,
                   max_memory_mb: int | None, precision: str) -> list[np.ndarray]:
    """The per-frame path of `stylize_video`, (H, W, 3) uint8 in and out."""
    from pipeline.tools.frame_batches import frame_options, opaque_uint8, rgb_image, stylize_stream
    from pipeline.serve.limits import DEFAULT_MAX_SIDE

    options = frame_options(PARAMS, DEFAULT_MAX_SIDE, model.instyle_controls)
    items = ((rgb_image(f, options), k) for k, f in enumerate(frames))
    return [opaque_uint8(y, image) for y, image, _ in stylize_stream(model, items, options, batch, device,
                                                                      max_memory_mb, precision)]


def per_frame(args: argparse.Namespace, h: int, w: int) -> dict[str, Any]:
    from pipeline.serve.limits import memory_cap_bytes
    from pipeline.serve.model_io import load_model
    from pipeline.serve.tiling import model_width, untiled_bytes

    t0 = time.perf_counter()
    model, _ = load_model(args.run / "export" / "generator.pt2", device=args.device)
    result: dict[str, Any] = {"size": f"{w}x{h}", "device": args.device,
                              "precision": resolve_precision(args.precision, args.device, model),
                              "load_s": time.perf_counter() - t0, "batches": {}}
    frames = frames_uint8(args.frames, h, w)
    start = time.perf_counter()
    stylize_frames(model, frames[:1], 1, args.device, args.max_memory, args.precision)  # warm-up: first call, allocator
    result["first_frame_s"] = time.perf_counter() - start
    cap = memory_cap_bytes(args.max_memory)
    for batch in (int(b) for b in args.batches.split(",")):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = stylize_frames(model, frames, batch, args.device, args.max_memory, args.precision)
        seconds = time.perf_counter() - start  # outputs are uint8 arrays on the CPU: the GPU is done
        assert len(out) == len(frames) and out[0].shape == (h, w, 3)
        result["batches"][str(batch)] = {
            "frames": len(frames), "seconds": seconds, "frames_per_s": len(frames) / seconds,
            "ms_per_frame": 1000 * seconds / len(frames), "peak_rss_mb": peak_rss_mb(),
            # else frame by frame
            "one_call_per_batch": untiled_bytes(h, w, min(batch, len(frames)), model_width(model)) <= cap}
    return result


def end_to_end(args: argparse.Namespace, h: int, w: int) -> dict[str, Any]:
    """Decode + stylize + encode of a short synthetic H.264 clip, and decode / encode alone."""
    import av

    from pipeline.serve.model_io import load_model
    from pipeline.tools.video import stylize_video
    from pipeline.tools.video_io import Frame, VideoReader, VideoWriter

    args.work.mkdir(parents=True, exist_ok=True)
    src, dst = args.work / f"clip-{w}x{h}.mp4", args.work / f"stylized-{w}x{h}.mp4"
    frames = frames_uint8(args.frames, h, w)
    out = av.open(str(src), "w")
    stream = out.add_stream("libx264", rate=25, options={"crf": "18"})
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for k, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = k
        out.mux(stream.encode(frame))
    out.mux(stream.encode())
    out.close()

    start = time.perf_counter()
    with VideoReader(src, 50_000_000) as reader:
        decoded = sum(isinstance(item, Frame) for item in reader.items())
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    writer = VideoWriter(args.work / "encode-only.mp4", w, h, rate=reader.rate, time_base=reader.time_base)
    for k, rgb in enumerate(frames):
        writer.write(rgb, k)
    writer.close()
    encode_s = time.perf_counter() - start

    model, _ = load_model(args.run / "export" / "generator.pt2")
    stylize_frames(model, frames[:1], 1, "cpu", None, args.precision)  # warm-up, as in per-frame mode
    start = time.perf_counter()
    written = stylize_video(model, src, dst, params=dict(PARAMS), batch=4, progress=False, precision=args.precision)
    seconds = time.perf_counter() - start
    return {"size": f"{w}x{h}", "frames": written, "decoded": decoded, "seconds": seconds,
            "frames_per_s": written / seconds, "precision": resolve_precision(args.precision, "cpu", model), "decode_frames_per_s": decoded / decode_s,
            "encode_frames_per_s": len(frames) / encode_s, "batch": 4, "peak_rss_mb": peak_rss_mb(),
            "clip_bytes": src.stat().st_size, "output_bytes": dst.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()  # this worker's entry point, as `python -m pipeline stylize`
    p = argparse.ArgumentParser(prog="python -m benchmarks.video")
    p.add_argument("--run", type=Path, required=True, help="run folder made by benchmarks.common.make_run")
    p.add_argument("--size", default="640x360", help="WxH")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batches", default="1,4", help="frames per model call, comma-separated")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=CHOICES, default="auto", help="of the convolutions (pipeline.serve.precision)")
    p.add_argument("--max-memory", type=int, default=None, help="activation cap per model call, MB "
                   "(default: the shipped default, as `stylize`)")
    p.add_argument("--end-to-end", action="store_true", help="decode + stylize + encode of a synthetic clip")
    p.add_argument("--work", type=Path, default=None, help="folder for the end-to-end clip")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.frames < 1:
        p.error("--frames must be ≥ 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.end_to_end and args.work is None:
        p.error("--end-to-end needs --work")
    result = end_to_end(args, h, w) if args.end_to_end else per_frame(args, h, w)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
