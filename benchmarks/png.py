"""PNG answers: encode time and bytes per zlib level and deflate strategy, on stylized photos.

    python -m benchmarks.png --model runs/A/export/generator.pt2 [--model ...] [--photos 4] [--size 512]

Each model stylizes the first N validation photos (resized to SIZE², the model's default style); each answer
is encoded as the server does (`pipeline.common.image_codec.to_uint8`, Pillow's PNG writer, one thread) at every
level and strategy; prints the mean of the best of 3 times and the mean bytes. The figures of
docs/serving.md (PNG level) come from this command.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.common.image_codec import to_uint8
from pipeline.serve.controls import call_model
from pipeline.serve.model_io import load_model

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "assets" / "content" / "val"
STRATEGIES = {"default": zlib.Z_DEFAULT_STRATEGY, "run-length (Z_RLE)": zlib.Z_RLE}


def answers(models: list[str], photos: list[Path], size: int) -> list[np.ndarray]:
    """(H, W, 3) uint8 answers: each model on each photo."""
    out = []
    for path in models:
        model, _ = load_model(path)
        for photo in photos:
            rgb = np.asarray(Image.open(photo).convert("RGB").resize((size, size), Image.BICUBIC))
            x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
            with torch.inference_mode():
                out.append(to_uint8(call_model(model, x, None, model.instyle_controls)[0]))
    return out


def encode_cost(arr: np.ndarray, level: int, strategy: int) -> tuple[float, int]:
    """(best of 3 seconds, bytes) of one PNG encode."""
    times, size = [], 0
    for _ in range(3):
        buf = io.BytesIO()
        start = time.perf_counter()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=level, compress_type=strategy)
        times.append(time.perf_counter() - start)
        size = buf.tell()
    return min(times), size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.png")
    p.add_argument("--model", action="append", required=True, help="a model file or a packaged model's name")
    p.add_argument("--photos", type=int, default=4)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--levels", default="0,1,6,9")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    photos = sorted(PHOTOS.glob("*.jpg"))[:args.photos]
    if not photos:
        raise SystemExit(f"no photos in {PHOTOS}: see ../shared/README.md")
    arrays = answers(args.model, photos, args.size)
    print(f"{len(arrays)} stylized {args.size}² answers, one thread\n")
    print("| zlib level | strategy | ms | kB |\n|---|---|---|---|")
    for level in (int(v) for v in args.levels.split(",")):
        for name, strategy in STRATEGIES.items():
            costs = [encode_cost(a, level, strategy) for a in arrays]
            print(f"| {level} | {name} | {statistics.mean(c[0] for c in costs) * 1e3:.1f} | "
                  f"{statistics.mean(c[1] for c in costs) / 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
