"""Write a folder of content photos as WebDataset shards (`make shards SRC=... OUT=...`).

Each image is decoded (EXIF orientation applied, converted to RGB), its short side capped
(default 512 px), re-encoded as JPEG and written with webdataset's `ShardWriter` under a
stable key. Unreadable files are skipped and counted, never fatal. Validation images go to
their own `val-*.tar` shards: from `--val_src` if given, else a fixed hash-chosen fraction.
"""
from __future__ import annotations

import hashlib
import io
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.serve.imaging import IMAGE_SUFFIXES, scaled_size



@dataclass
class ShardStats:
    images: int = 0
    skipped: int = 0
    shards: int = 0
    bytes: int = 0
    skipped_files: list[str] = field(default_factory=list)

    def summary(self, split: str) -> str:
        return f"{split}: {self.images} images, {self.shards} shards, {self.bytes / 1e6:.1f} MB, {self.skipped} skipped"


def list_images(src: Path) -> list[Path]:
    """All image files under `src` (recursive, sorted so shards are reproducible)."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def encode_photo(data: bytes | Path, max_side: int = 512, quality: int = 95) -> bytes:
    """Decode any PIL-readable image, apply EXIF orientation, RGB, cap the short side, return JPEG bytes."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGB")
        if min(im.size) > max_side:  # PIL's Lanczos on the 8-bit photo, before its one JPEG encoding
            h, w = scaled_size(im.height, im.width, max_side, "short")
            im = im.resize((w, h), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


def sample_key(path: Path, root: Path) -> str:
    """A webdataset-safe key (no dots: wds splits keys from extensions at the first dot)."""
    rel = str(path.relative_to(root).with_suffix(""))
    return re.sub(r"[^A-Za-z0-9_-]+", "_", rel)


def is_val(key: str, fraction: float) -> bool:
    """Deterministic hash split, so re-running the writer never moves an image between splits."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def write_split(items: list[tuple[str, bytes | Path]], out: Path, prefix: str, *, max_side: int,
                min_shards: int, max_per_shard: int, progress: bool = True) -> ShardStats:
    """Write (key, source) items to `out/{prefix}-NNNNNN.tar`; returns counts."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{prefix}-*.tar"):  # a rewrite replaces the split, never mixes two versions
        old.unlink()
    stats = ShardStats()
    if not items:
        return stats
    # At least `min_shards` shards so every (rank, worker) pair under DDP gets one.
    per_shard = max(1, min(max_per_shard, math.ceil(len(items) / min_shards)))
    with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for key, source in tqdm(items, desc=prefix, unit="img", disable=not progress):
            try:
                jpg = encode_photo(source, max_side)
            except Exception as e:  # noqa: BLE001 - any undecodable file is skipped and reported
                stats.skipped += 1
                stats.skipped_files.append(f"{key}: {type(e).__name__}: {e}")
                continue
            sink.write({"__key__": key, "jpg": jpg})
            stats.images += 1
    shards = sorted(out.glob(f"{prefix}-*.tar"))
    stats.shards, stats.bytes = len(shards), sum(p.stat().st_size for p in shards)
    return stats


def build_shards(src: Path, out: Path, *, val_src: Path | None = None, val_fraction: float = 0.05,
                 max_side: int = 512, min_shards: int = 8, max_per_shard: int = 1000,
                 progress: bool = True) -> dict[str, ShardStats]:
    """Shard `src` (and `val_src`) into `out/train-*.tar` and `out/val-*.tar`."""
    files = list_images(src)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {src}")
    keyed = [(sample_key(p, src), p) for p in files]
    if val_src is not None:
        train = keyed
        val = [(sample_key(p, val_src), p) for p in list_images(val_src)]
    else:
        val = [kp for kp in keyed if is_val(kp[0], val_fraction)] or keyed[:1]
        val_keys = {k for k, _ in val}
        train = [kp for kp in keyed if kp[0] not in val_keys]
    kw = dict(max_side=max_side, max_per_shard=max_per_shard, progress=progress)
    return {"train": write_split(train, out, "train", min_shards=min_shards, **kw),
            "val": write_split(val, out, "val", min_shards=1, **kw)}


def command(*, src: Path, out: Path, val_src: Path | None = None, val_fraction: float = 0.05, max_side: int = 512,
            min_shards: int = 8, max_per_shard: int = 1000) -> int:
    """Write a folder of content photos as WebDataset shards (train-*.tar, val-*.tar).

    Args:
        src: folder of content images (searched recursively).
        out: output folder for train-*.tar and val-*.tar.
        val_src: separate folder of validation images (default: a fixed hash-chosen fraction of src).
        val_fraction: held-out fraction when val_src is not given.
        max_side: cap on the short side, px.
        min_shards: at least this many train shards (≥ ranks × workers).
        max_per_shard: at most this many images per shard.
    """
    try:
        stats = build_shards(src, out, val_src=val_src, val_fraction=val_fraction, max_side=max_side,
                             min_shards=min_shards, max_per_shard=max_per_shard)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, s in stats.items():
        for line in s.skipped_files:
            print(f"skipped {line}", file=sys.stderr)
        print(s.summary(split))
    if stats["train"].images == 0:
        print("error: no readable training image", file=sys.stderr)
        return 1
    return 0
