"""Offline stylization with the server's exact pre/post-processing.

    python -m pipeline stylize --model runs/NAME/export/generator.pt2 [--format png|jpeg|webp]
        [--quality Q] [--max_side N] [--max_memory_mb MB] [--style NAME | --style 'a:0.7,b:0.3']
        [--strength S] [--preserve_color true] [--batch N] [--fps F] [--device cuda] [--precision bf16] INPUT OUTPUT

INPUT a file → OUTPUT a file (format from --format, else from OUTPUT's suffix, else png).
INPUT a folder → every image in it (by suffix, not recursive) → OUTPUT folder as STEM.EXT;
files that cannot be read are reported and skipped, and the exit code is then 1.
Same functions as the TorchServe handler (`pipeline.serve.inference`), so the pixels are the same.

Video mode (`pipeline.tools.video`, needs the `video` extra), chosen by the paths:
INPUT a video (.mp4 .mov .mkv .avi .webm .m4v) → OUTPUT .mp4/.mkv/.mov (H.264, the input's timing,
size, rotation; audio copied) or a folder (frame_000000.png, ...); INPUT an animated .gif/.webp →
OUTPUT the same kind (frame durations, loop count kept); INPUT a folder of frames and OUTPUT
.mp4/.mkv/.mov → a video at --fps (frames in natural name order). A folder into a folder stays the
image mode above. `--batch` frames go through the model per call; every frame is stylized as this
command stylizes one image.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch

from pipeline.serve.controls import conditioning
from pipeline.common.image_codec import FORMAT_ALIASES, FORMATS, BadImageRequest
from pipeline.serve.inference import finish, prepare, run_batch
from pipeline.serve.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from pipeline.common.image_sources import image_files
from pipeline.common.memory import reuse_freed_memory
from pipeline.serve.model_io import load_model
from pipeline.serve.precision import DEFAULT_PRECISION, resolve_precision
from pipeline.tools.video import job_kind, stylize_video

SUFFIX_OF = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
OutputFormat = Literal["png", "jpeg", "jpg", "webp"]  # FORMATS and FORMAT_ALIASES (pipeline.common.image_codec)


def stylize_bytes(model: Any, data: bytes, params: dict[str, str], max_side: int = DEFAULT_MAX_SIDE,
                  max_pixels: int = DEFAULT_MAX_PIXELS, device: str | torch.device = "cpu",
                  max_memory_mb: int | None = None, precision: str = DEFAULT_PRECISION) -> tuple[bytes, str]:
    """One image's bytes → (stylized bytes, content type), exactly as the server answers.
    Images whose activations would exceed `max_memory_mb` are stylized in tiles (same pixels)."""
    image, options = prepare(data, params, max_side, max_pixels, getattr(model, "instyle_controls", None))
    (stylized,) = run_batch(model, [image], device, max_memory_mb, [options.conditioning], precision)
    return finish(stylized, image, options)


def format_for(output: Path, requested: str | None) -> str:
    """--format if given, else the output file's suffix when it names a format, else png."""
    if requested:
        return requested
    suffix = output.suffix.lower().lstrip(".")
    suffix = FORMAT_ALIASES.get(suffix, suffix)
    return suffix if suffix in FORMATS else "png"


def _params(fmt: str, quality: int | None, max_side: int | None, preserve_color: bool = False,
            style: str | None = None, strength: float | None = None) -> dict[str, str]:
    """The request options, as the server receives them."""
    params = {"format": fmt, "preserve_color": "true" if preserve_color else "false"}
    if style is not None:
        params["style"] = style
    if strength is not None:
        params["strength"] = repr(float(strength))
    if quality is not None:
        params["quality"] = str(quality)
    if max_side is not None:
        params["max_side"] = str(max_side)
    return params


def command(input: Path, output: Path, *, model: Path, format: OutputFormat | None = None, quality: int | None = None,
            max_side: int | None = None, server_max_side: int = DEFAULT_MAX_SIDE,
            max_memory_mb: int | None = None, preserve_color: bool = False, style: str | None = None,
            strength: float | None = None, batch: int = 1, fps: float = 25.0, device: str = "cpu",
            precision: Literal["auto", "fp32", "bf16", "fp16"] = DEFAULT_PRECISION) -> int:
    """Stylize an image file, or every image in a folder, with the TorchServe handler's exact processing.

    Also a video, an animated GIF/WebP, or a folder of frames into a video (see the module docstring).

    Exit code 0: all stylized; 1: some image failed (reported, the others are written); 2: usage or model error.

    Args:
        input: image file or folder of images (by suffix, not recursive).
        output: output file (format from --format, else its suffix, else png) or folder (STEM.EXT per image).
        model: generator.pt2, generator.pt, a .ckpt, or a packaged model's name (`starter`: models/starter/).
        format: output format (default: from OUTPUT's suffix, else png).
        quality: jpeg/webp quality 1..100 (default 90).
        max_side: downscale so the longer side is ≤ N.
        server_max_side: cap on max_side, as the server's.
        max_memory_mb: activation memory per image; larger images are stylized in tiles with whole-image
            instance-norm statistics (default: $INSTYLE_MAX_MEMORY_MB, else 2048).
        preserve_color: keep the photo's colours (the stylized luminance with the photo's chroma).
        style: a multi-style model's style, by name, or a mix 'a:0.7,b:0.3' (default: its first style).
        strength: 0..1, the style/content balance of a model trained with the strength control (default 1).
        batch: video mode: frames per model call. 1 (default) gives each frame the image command's exact
            pixels and is the fastest on a 2-core CPU (docs/benchmarks.md); larger batches pay off on a
            GPU and may differ by float rounding, ≤ 1 level in 8 bit.
        fps: video mode: frame rate of a video made from a folder of frames.
        device: where the model runs: cpu (default), cuda, cuda:1, ...
        precision: auto (default: bf16 on a CPU with native bf16, else fp32) | fp32 | bf16 | fp16: the
            precision of the convolutions (the rest is fp32; docs/serving.md has the pixel differences).
    """
    reuse_freed_memory()  # this command's process: allocator tuning (pipeline.common.memory)
    requested = FORMAT_ALIASES.get(format, format) if format else None
    src, dst = Path(input), Path(output)
    if not src.exists():
        print(f"error: {src} does not exist", file=sys.stderr)
        return 2
    try:
        video = job_kind(src, dst)
        if video and format is not None:
            raise ValueError("--format is for images; a video's or animation's format comes from OUTPUT's suffix")
        if video and batch < 1:
            raise ValueError(f"--batch {batch}: give at least 1 frame per model call")
        if video == "frames-to-video" and not fps > 0:
            raise ValueError(f"--fps {fps}: give a positive frame rate")
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine's torch sees no CUDA GPU")
    except (ValueError, RuntimeError) as e:  # torch.device names a bad device string with a RuntimeError
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        net, meta = load_model(model, target)
        chosen = resolve_precision(precision, target, net)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: cannot load model: {e}", file=sys.stderr)
        return 2
    controls = net.instyle_controls
    print(f"model {model}: {controls.describe()}, step {meta.get('global_step')}, "
          f"precision {chosen}{' (auto)' if precision == 'auto' else ''}")
    precision = chosen
    params = _params("png", quality, max_side, preserve_color, style, strength)
    try:  # the style options are the same for every image: refuse bad ones before any is read
        conditioning(params, controls)
    except BadImageRequest as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if video:
        return _video(net, src, dst, params, server_max_side, max_memory_mb, batch, fps, target, precision)

    def one(path: Path, out: Path, fmt: str) -> None:
        start = time.perf_counter()
        data, _ = stylize_bytes(net, path.read_bytes(), {**params, "format": fmt}, server_max_side,
                                device=target, max_memory_mb=max_memory_mb, precision=precision)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        print(f"{path} → {out} ({time.perf_counter() - start:.2f} s)")

    if src.is_file():
        try:
            one(src, dst, format_for(dst, requested))
        except (BadImageRequest, OSError) as e:
            print(f"error: {src}: {e}", file=sys.stderr)
            return 1
        return 0
    if dst.exists() and dst.resolve() == src.resolve():
        print("error: the output folder must differ from the input folder", file=sys.stderr)
        return 2
    fmt = requested or "png"
    try:
        files = image_files(src)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed, written = [], set()
    for path in files:
        out = dst / (path.stem + SUFFIX_OF[fmt])
        try:
            if out in written:  # e.g. a.jpg and a.png: never overwrite an output of this run
                raise BadImageRequest(f"{out.name} was already written for another input with the same stem")
            one(path, out, fmt)
            written.add(out)
        except (BadImageRequest, OSError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            failed.append(path)
    print(f"{len(files) - len(failed)} of {len(files)} images stylized into {dst}")
    return 1 if failed else 0


def _video(net: Any, src: Path, dst: Path, params: dict[str, str], server_max_side: int,
           max_memory_mb: int | None, batch: int, fps: float, device: torch.device, precision: str) -> int:
    """Video mode of `command`: 0 when written, 1 when the input cannot be read or the output written."""
    start = time.perf_counter()
    try:
        frames = stylize_video(net, src, dst, params=params, batch=batch, max_side=server_max_side,
                               max_memory_mb=max_memory_mb, device=device, fps=fps, progress=True,
                               precision=precision)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"{src} → {dst} ({frames} frames in {seconds:.1f} s, {frames / max(seconds, 1e-9):.2f} frames/s)")
    return 0
