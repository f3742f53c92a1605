"""Write a folder of content photos as WebDataset shards (`make shards SRC=... OUT=...`).

Each image is decoded (EXIF orientation applied, converted to RGB), its short side capped
(default 512 px), re-encoded as JPEG and written under a stable key. Unreadable files are
skipped and reported, never fatal. Validation images go to their own `val-*.tar` shards: from
`--val_src` if given, else a fixed hash-chosen fraction.

At scale: decoding and encoding run in a process pool (`--workers`), the tar writing stays
in the parent in input order, so the output is byte-identical whatever the number of workers.
Images are assigned to shards from the sorted file list alone, each shard is written to a
temporary name and renamed when complete, and a hidden sidecar `OUT/.{shard}.json` records
each finished one (its settings, keys, skipped files, size and fingerprint). A re-run keeps the
shards whose fingerprint still matches and rewrites or removes the others (see `plan_shards`).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import webdataset as wds
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.serve.imaging import IMAGE_SUFFIXES, scaled_size

Source = bytes | Path
SHARD_FORMAT = 1  # bump when encode_photo's output changes, so older shards are re-encoded
JPEG_QUALITY = 95
TAR_MTIME = 0  # fixed member mtime: the same inputs give byte-identical tars on every run


@dataclass
class ShardStats:
    images: int = 0  # images in the split's shards (reused and written)
    skipped: int = 0
    shards: int = 0
    bytes: int = 0
    skipped_files: list[str] = field(default_factory=list)
    reused: int = 0  # shards kept from an earlier run
    written: int = 0  # shards encoded by this run
    processed: int = 0  # files decoded by this run (skipped ones included)
    seconds: float = 0.0  # time spent encoding by this run

    def summary(self, split: str) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        return (f"{split}: {self.images} images, {self.shards} shards ({self.reused} reused, {self.written} written), "
                f"{self.bytes / 1e6:.1f} MB, {self.processed} encoded at {rate:.1f} img/s, {self.skipped} skipped")


@dataclass(frozen=True)
class PlannedShard:
    name: str
    items: list[tuple[str, Source]]
    fingerprint: str


def list_images(src: Path) -> list[Path]:
    """All image files under `src` (recursive, sorted so shards are reproducible)."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def encode_photo(data: Source, max_side: int = 512, quality: int = JPEG_QUALITY) -> bytes:
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


def source_id(source: Source) -> str:
    """What identifies a source's content: a hash of in-memory bytes; size and mtime of a file
    (a stat is free where reading 13 GB of COCO is not; only an edit that keeps the size and
    restores the mtime escapes it)."""
    if isinstance(source, bytes):
        return "sha256:" + hashlib.sha256(source).hexdigest()
    try:
        st = source.stat()
    except OSError:
        return "missing"  # encoding will skip it too
    return f"{st.st_size}:{st.st_mtime_ns}"


def plan_shards(items: list[tuple[str, Source]], prefix: str, *, max_side: int, quality: int,
                min_shards: int, max_per_shard: int) -> list[PlannedShard]:
    """Fixed consecutive runs of `items` → `{prefix}-NNNNNN.tar`, each with the fingerprint of its bytes:
    a hash of SHARD_FORMAT, max_side, JPEG quality and, per item in order, its key and `source_id`.
    An unreadable file leaves its shard one image short rather than moving later images, so the
    assignment depends on the file list only."""
    if not items:
        return []
    # At least `min_shards` shards so every (rank, worker) pair under DDP gets one.
    per_shard = max(1, min(max_per_shard, math.ceil(len(items) / min_shards)))
    settings = json.dumps({"format": SHARD_FORMAT, "max_side": max_side, "quality": quality})
    plan = []
    for index, start in enumerate(range(0, len(items), per_shard)):
        chunk = items[start:start + per_shard]
        h = hashlib.sha256(settings.encode())
        for key, source in chunk:
            h.update(f"\n{key}\0{source_id(source)}".encode())
        plan.append(PlannedShard(f"{prefix}-{index:06d}.tar", chunk, h.hexdigest()))
    return plan


def read_record(path: Path) -> dict | None:
    """A shard's sidecar record, None when missing or unreadable (the shard then gets rewritten)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: dict) -> None:
    """Atomically write a sidecar, so a kill never leaves one half written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _encode_item(item: tuple[str, Source], max_side: int, quality: int) -> tuple[bytes | None, str]:
    """(JPEG bytes, "") or (None, why): runs in a worker, so failures travel back as values."""
    key, source = item
    try:
        return encode_photo(source, max_side, quality), ""
    except Exception as e:  # noqa: BLE001 - any undecodable file is skipped and reported
        return None, f"{key}: {type(e).__name__}: {e}"


@contextlib.contextmanager
def _mapper(workers: int, jobs: int) -> Iterator[Callable[[Callable, Iterable], Iterable]]:
    """An ordered `map`: in-process for one worker, else a pool's `imap` (results in input order)."""
    if workers <= 1 or jobs < 2:
        yield map
        return
    # fork where there is one: workers start in milliseconds instead of re-importing torch (they only run PIL)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    chunksize = max(1, min(16, jobs // (workers * 4)))  # batches amortise IPC, small enough to balance
    # Workers ignore Ctrl-C: the parent stops them and removes its temp file, without their tracebacks.
    with ctx.Pool(min(workers, jobs), initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        yield functools.partial(pool.imap, chunksize=chunksize)


def _write_shard(s: PlannedShard, out: Path, results: Iterator[tuple[bytes | None, str]], bar: tqdm) -> dict:
    """Write one planned shard under a temporary name, rename it when complete; its sidecar record."""
    tmp, written, skipped = out / f".{s.name}.tmp", [], []
    try:
        with open(tmp, "wb") as f:
            with wds.TarWriter(f, mtime=TAR_MTIME) as sink:
                for key, _ in s.items:  # results arrive in job order: this shard's items come next
                    jpg, why = next(results)
                    bar.update()
                    if jpg is None:
                        skipped.append(why)
                        continue
                    sink.write({"__key__": key, "jpg": jpg})
                    written.append(key)
            f.flush()
            os.fsync(f.fileno())  # the rename must never publish a shard the disk has not got
        if written:
            os.replace(tmp, out / s.name)  # atomic: a shard file is always complete
        else:
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)  # a kill -9 leaves it instead: the next run removes it
        raise
    return {"fingerprint": s.fingerprint, "keys": written, "skipped": skipped,
            "size": (out / s.name).stat().st_size if written else 0}


def write_split(items: list[tuple[str, Source]], out: Path, prefix: str, *, max_side: int,
                min_shards: int, max_per_shard: int, progress: bool = True, workers: int | None = 1,
                quality: int = JPEG_QUALITY) -> ShardStats:
    """Write (key, source) items to `out/{prefix}-NNNNNN.tar`, reusing finished matching shards.

    Shards not in the plan or whose sidecar does not match are deleted first, as are a killed
    run's temporary files, so the split never mixes two versions. `workers`: processes that
    decode and encode (None: os.cpu_count(); 1, the default for library callers such as the
    sample set inside a training process: no pool); the bytes do not depend on it."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(items, prefix, max_side=max_side, quality=quality, min_shards=min_shards,
                       max_per_shard=max_per_shard)

    def finished(s: PlannedShard) -> dict | None:
        record, path = read_record(out / f".{s.name}.json"), out / s.name
        if record is None or record.get("fingerprint") != s.fingerprint:
            return None
        if not record.get("keys"):  # all its images unreadable: no file (an empty tar would starve a reader)
            return record if not path.exists() else None
        return record if path.is_file() and path.stat().st_size == record.get("size") else None

    done = {s.name: record for s in plan if (record := finished(s)) is not None}
    keep = {*done, *(f".{name}.json" for name in done)}
    # anything else of this split goes: other versions' shards and sidecars, a killed run's temp files
    for old in [*out.glob(f"{prefix}-*.tar"), *out.glob(f".{prefix}-*")]:
        if old.name not in keep:
            old.unlink()

    stats = ShardStats(reused=len(done))
    todo = [s for s in plan if s.name not in done]
    jobs = [item for s in todo for item in s.items]
    encode = functools.partial(_encode_item, max_side=max_side, quality=quality)
    start = time.perf_counter()
    with _mapper(workers, len(jobs)) as mapper, tqdm(total=len(jobs), desc=prefix, unit="img",
                                                     disable=not progress or not jobs) as bar:
        results = iter(mapper(encode, jobs))
        for s in todo:
            done[s.name] = _write_shard(s, out, results, bar)
            done[s.name]["settings"] = {"format": SHARD_FORMAT, "max_side": max_side, "quality": quality}
            write_record(out / f".{s.name}.json", done[s.name])  # after the rename: no record, no reuse
            stats.written += 1
    stats.processed, stats.seconds = len(jobs), time.perf_counter() - start

    records = [done[s.name] for s in plan]
    stats.images, stats.bytes = sum(len(r["keys"]) for r in records), sum(r["size"] for r in records)
    stats.shards = sum(1 for r in records if r["keys"])
    stats.skipped_files = [line for r in records for line in r["skipped"]]
    stats.skipped = len(stats.skipped_files)
    return stats


def build_shards(src: Path, out: Path, *, val_src: Path | None = None, val_fraction: float = 0.05,
                 max_side: int = 512, min_shards: int = 8, max_per_shard: int = 1000,
                 progress: bool = True, workers: int | None = None) -> dict[str, ShardStats]:
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
