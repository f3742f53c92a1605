"""Offline stylization with the server's exact pre/post-processing.

    python -m pipeline stylize --model runs/NAME/export/generator.pt [--format png|jpeg|webp]
        [--quality Q] [--max-side N] [--max-memory MB] INPUT OUTPUT

INPUT a file → OUTPUT a file (format from --format, else from OUTPUT's suffix, else png).
INPUT a folder → every image in it (by suffix, not recursive) → OUTPUT folder as STEM.EXT;
files that cannot be read are reported and skipped, and the exit code is then 1.
Same functions as the TorchServe handler (`pipeline.serve.inference`), so the pixels are the same.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.serve.imaging import FORMAT_ALIASES, FORMATS, IMAGE_SUFFIXES, BadImageRequest
from pipeline.serve.imaging import DEFAULT_MAX_PIXELS
from pipeline.serve.inference import DEFAULT_MAX_SIDE, finish, prepare, run_batch
from pipeline.serve.tiling import DEFAULT_MAX_MEMORY_MB, ENV_MAX_MEMORY
from pipeline.serve.model_io import load_model

SUFFIX_OF = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def stylize_bytes(model: Any, data: bytes, params: dict[str, str], max_side: int = DEFAULT_MAX_SIDE,
                  max_pixels: int = DEFAULT_MAX_PIXELS, device: str | torch.device = "cpu",
                  max_memory_mb: int | None = None) -> tuple[bytes, str]:
    """One image's bytes → (stylized bytes, content type), exactly as the server answers.
    Images whose activations would exceed `max_memory_mb` are stylized in tiles (same pixels)."""
    image, options = prepare(data, params, max_side, max_pixels)
    (stylized,) = run_batch(model, [image], device, max_memory_mb)
    return finish(stylized, image, options)


def format_for(output: Path, requested: str | None) -> str:
    """--format if given, else the output file's suffix when it names a format, else png."""
    if requested:
        return requested
    suffix = output.suffix.lower().lstrip(".")
    suffix = FORMAT_ALIASES.get(suffix, suffix)
    return suffix if suffix in FORMATS else "png"


def _params(fmt: str, args: argparse.Namespace) -> dict[str, str]:
    params = {"format": fmt}
    if args.quality is not None:
        params["quality"] = str(args.quality)
    if args.max_side is not None:
        params["max_side"] = str(args.max_side)
    return params


def _one(model: Any, src: Path, dst: Path, fmt: str, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    data, _ = stylize_bytes(model, src.read_bytes(), _params(fmt, args), args.server_max_side,
                            max_memory_mb=args.max_memory)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    print(f"{src} → {dst} ({time.perf_counter() - start:.2f} s)")


def run(args: argparse.Namespace) -> int:
    """Stylize a file or a folder; returns the exit code."""
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        print(f"error: {src} does not exist", file=sys.stderr)
        return 2
    try:
        model, meta = load_model(args.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: cannot load model: {e}", file=sys.stderr)
        return 2
    print(f"model {args.model}: style {meta.get('style_image')}, step {meta.get('global_step')}")
    if src.is_file():
        try:
            _one(model, src, dst, format_for(dst, args.format), args)
        except (BadImageRequest, OSError) as e:
            print(f"error: {src}: {e}", file=sys.stderr)
            return 1
        return 0
    if dst.exists() and dst.resolve() == src.resolve():
        print("error: the output folder must differ from the input folder", file=sys.stderr)
        return 2
    fmt = args.format or "png"
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {src}", file=sys.stderr)
        return 1
    failed, written = [], set()
    for path in files:
        out = dst / (path.stem + SUFFIX_OF[fmt])
        try:
            if out in written:  # e.g. a.jpg and a.png: never overwrite an output of this run
                raise BadImageRequest(f"{out.name} was already written for another input with the same stem")
            _one(model, path, out, fmt, args)
            written.add(out)
        except (BadImageRequest, OSError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            failed.append(path)
    print(f"{len(files) - len(failed)} of {len(files)} images stylized into {dst}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline stylize", description="Stylize images offline, "
                                     "with the same processing as the TorchServe handler.")
    parser.add_argument("--model", required=True, type=Path, help="generator.pt, generator.pt2 or a .ckpt")
    parser.add_argument("--format", type=str.lower, choices=sorted(FORMATS) + sorted(FORMAT_ALIASES), default=None,
                        help="output format (default: from OUTPUT's suffix, else png)")
    parser.add_argument("--quality", type=int, default=None, help="jpeg/webp quality 1..100 (default 90)")
    parser.add_argument("--max-side", type=int, default=None, help="downscale so the longer side is ≤ N")
    parser.add_argument("--server-max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help=f"cap on --max-side, as the server's (default {DEFAULT_MAX_SIDE})")
    parser.add_argument("--max-memory", type=int, default=None, metavar="MB",
                        help=f"activation memory per image; larger images are stylized in tiles with whole-image "
                             f"instance-norm statistics (default ${ENV_MAX_MEMORY} or {DEFAULT_MAX_MEMORY_MB})")
    parser.add_argument("input", type=Path, help="image file or folder of images")
    parser.add_argument("output", type=Path, help="output file or folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 some image failed, 2 usage/model error)."""
    args = build_parser().parse_args(argv)
    if args.format:
        args.format = FORMAT_ALIASES.get(args.format, args.format)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
