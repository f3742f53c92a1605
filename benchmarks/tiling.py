"""Tiled-inference worker: one very large image through the shipped path, own process.

    python -m benchmarks.tiling --run RUN --size 2160x3840 [--untiled | --check] [--max-memory MB]

Default: `pipeline.serve.inference.run_batch` with the served .pt2 export and the default memory cap,
as the TorchServe handler and `python -m pipeline stylize` run it (over the cap: tiled).
`--untiled` forces one whole-image call; `--check` runs both and reports the max abs difference
(so it needs memory for the untiled call). Prints one JSON line with seconds and peak RSS.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, photo


def main(argv: list[str] | None = None) -> int:
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()  # this worker's entry point (a no-op with $INSTYLE_REUSE_FREED_MEMORY=0: the reference)
    p = argparse.ArgumentParser(prog="python -m benchmarks.tiling")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--size", default="2160x3840", help="HxW")
    p.add_argument("--max-memory", type=int, default=None, help="MB (default: the shipped default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--untiled", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    from pipeline.common.image_codec import DecodedImage
    from pipeline.serve.inference import run_batch
    from pipeline.serve.limits import memory_cap_bytes
    from pipeline.serve.controls import call_model
    from pipeline.serve.model_io import load_model
    from pipeline.serve.tiling import model_width, stylize_tiled, tile_for_cap, tileable_generator, untiled_bytes

    h, w = (int(v) for v in args.size.lower().split("x"))
    model, _ = load_model(args.run / "export" / "generator.pt2")
    image = DecodedImage(rgb=photo(1, h, w)[0], alpha=None)
    cap, width = memory_cap_bytes(args.max_memory), model_width(model)
    result = {"size": f"{w}x{h}", "memory_cap_mb": cap // 2**20, "tile": tile_for_cap(cap, width),
              "tiled": untiled_bytes(h, w, 1, width) > cap and not args.untiled}

    def untiled() -> torch.Tensor:  # the exported graph, called as the server calls it (first style, strength 1)
        with torch.inference_mode():
            return call_model(model, image.rgb[None], None, model.instyle_controls)[0]

    rss_before = peak_rss_mb()
    start = time.perf_counter()
    if args.untiled:
        out = untiled()
    elif args.check:  # tiled whatever the size, with the tile size the cap gives
        out = stylize_tiled(tileable_generator(model), image.rgb[None], result["tile"])[0]
        result["tiled"] = True
    else:
        (out,) = run_batch(model, [image], max_memory_mb=args.max_memory)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    result["rss_before_mb"] = rss_before
    if args.check:
        start = time.perf_counter()
        whole = untiled()
        result["untiled_seconds"] = time.perf_counter() - start
        result["max_abs_diff"] = (out - whole).abs().max().item()
        result["mean_abs_diff"] = (out - whole).abs().mean().item()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
