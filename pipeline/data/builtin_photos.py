"""The embedded default content set: public-domain / CC0 photos that scikit-image ships.

`make train` without DATA builds these shards once (data/shards/skimage), so training runs on
a fresh machine with nothing downloaded. Real users point `make shards` at their own photos.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.shard_writer import ShardStats, write_split
from pipeline.common.image_sources import skimage_photo

TRAIN = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "moon",
         "coins", "brick", "grass", "gravel", "clock")
VAL = ("chelsea", "coffee")
SAMPLE_SHARDS = Path("data/shards/skimage")  # where training finds them when no DATA is given


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def build_sample_shards(out: Path, max_side: int = 512, progress: bool = False) -> dict[str, ShardStats]:
    """Write train-*.tar / val-*.tar from the scikit-image photos into `out`."""
    def items(names: tuple[str, ...]) -> list[tuple[str, bytes]]:
        return [(n, png_bytes(skimage_photo(n))) for n in names]

    return {"train": write_split(items(TRAIN), out, "train", max_side=max_side, min_shards=4, max_per_shard=100, progress=progress),
            "val": write_split(items(VAL), out, "val", max_side=max_side, min_shards=1, max_per_shard=100, progress=progress)}


def ensure_sample_shards(out: Path) -> Path:
    """Build the sample shards if `out` has none yet; return `out`."""
    if not any(out.glob("train-*.tar")) or not any(out.glob("val-*.tar")):
        for split, s in build_sample_shards(out).items():
            print(f"sample content set ({split}): {s.summary(split)}")
    return out


def command(*, out: Path = SAMPLE_SHARDS) -> int:
    """Build the scikit-image sample shards (what `make train` without DATA trains on).

    Args:
        out: shard folder; nothing is rewritten if it already has shards.
    """
    ensure_sample_shards(out)
    print(f"sample shards ready in {out}")
    return 0
