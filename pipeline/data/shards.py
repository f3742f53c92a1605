"""Write a folder of content photos as WebDataset shards (`make shards SRC=... OUT=...`).

Each image is decoded (EXIF orientation applied, converted to RGB), its short side capped
(default 512 px), re-encoded as JPEG and written under a stable key. Unreadable files are
skipped and reported, never fatal. Validation images go to their own `val-*.tar` shards: from
`--val_src` if given, else a fixed hash-chosen fraction.

At scale (`shard_writer.py`): decoding and encoding run in a process pool (`--workers`), the tar
writing stays in the parent in input order, so the output is byte-identical whatever the number
of workers; images are assigned to shards from the sorted file list alone, and a re-run after an
interruption keeps the shards already finished.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

from pipeline.data.shard_writer import ShardStats, write_split
from pipeline.common.image_sources import image_files


def sample_key(path: Path, root: Path) -> str:
    """A webdataset-safe key (no dots: wds splits keys from extensions at the first dot)."""
    rel = str(path.relative_to(root).with_suffix(""))
    return re.sub(r"[^A-Za-z0-9_-]+", "_", rel)


def is_val(key: str, fraction: float) -> bool:
    """Deterministic hash split, so re-running the writer never moves an image between splits."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def build_shards(src: Path, out: Path, *, val_src: Path | None = None, val_fraction: float = 0.05,
                 max_side: int = 512, min_shards: int = 8, max_per_shard: int = 1000,
                 progress: bool = True, workers: int | None = None) -> dict[str, ShardStats]:
    """Shard `src` (and `val_src`) into `out/train-*.tar` and `out/val-*.tar`."""
    # recursive, sorted so shards are reproducible
    keyed = [(sample_key(p, src), p) for p in image_files(src, recursive=True)]
    if val_src is not None:
        train = keyed
        val = [(sample_key(p, val_src), p) for p in image_files(val_src, recursive=True)]
    else:
        val = [kp for kp in keyed if is_val(kp[0], val_fraction)] or keyed[:1]
        val_keys = {k for k, _ in val}
        train = [kp for kp in keyed if kp[0] not in val_keys]
    kw = dict(max_side=max_side, max_per_shard=max_per_shard, progress=progress, workers=workers)
    return {"train": write_split(train, out, "train", min_shards=min_shards, **kw),
            "val": write_split(val, out, "val", min_shards=1, **kw)}


def command(*, src: Path, out: Path, val_src: Path | None = None, val_fraction: float = 0.05, max_side: int = 512,
            min_shards: int = 8, max_per_shard: int = 1000, workers: int | None = None) -> int:
    """Write a folder of content photos as WebDataset shards (train-*.tar, val-*.tar).

    Re-running with the same settings keeps the finished shards (an interrupted run resumes).

    Args:
        src: folder of content images (searched recursively).
        out: output folder for train-*.tar and val-*.tar.
        val_src: separate folder of validation images (default: a fixed hash-chosen fraction of src).
        val_fraction: held-out fraction when val_src is not given.
        max_side: cap on the short side, px.
        min_shards: at least this many train shards (≥ ranks × workers).
        max_per_shard: at most this many images per shard.
        workers: processes decoding and encoding images (default: os.cpu_count()); the output does not depend on it.
    """
    start = time.perf_counter()
    try:
        stats = build_shards(src, out, val_src=val_src, val_fraction=val_fraction, max_side=max_side,
                             min_shards=min_shards, max_per_shard=max_per_shard, workers=workers)
    except (FileNotFoundError, ValueError) as e:  # no photos, or a bad option value
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the same command resumes, keeping the finished shards", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - start
    for split, s in stats.items():
        for line in s.skipped_files:
            print(f"skipped {line}", file=sys.stderr)
        print(s.summary(split))
    done = {k: sum(getattr(s, k) for s in stats.values()) for k in ("processed", "reused", "written")}
    print(f"total: {done['processed']} images encoded in {seconds:.1f} s ({done['processed'] / seconds:.1f} img/s, "
          f"workers={workers or os.cpu_count()}), {done['reused']} shards reused, {done['written']} written")
    if stats["train"].images == 0:
        print("error: no readable training image", file=sys.stderr)
        return 1
    return 0
