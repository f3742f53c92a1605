"""Writing one split of shards, in a process pool, resumable. Photos are encoded by the pool and
the tars written in input order in the parent (byte-identical output whatever the number of
workers), one atomic file per shard, and a hidden sidecar `OUT/.{shard}.json` per finished shard (settings, keys, skipped files, size,
fingerprint) so that a re-run keeps the shards whose fingerprint still matches and rewrites or
removes the others (see `plan_shards`). Used by `shards` (`make shards`) and `sample_data`.
"""

import contextlib
import functools
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import webdataset as wds
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.common.files import atomic_write
from pipeline.common.image_codec import scaled_size

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
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(record))


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
    written, skipped = [], []
    # a kill -9 leaves the temporary instead (a hidden `.NAME.*.partial` folder): the next run removes it
    with atomic_write(out / s.name) as tmp:  # a shard file is always complete
        with open(tmp, "wb") as f, wds.TarWriter(f, mtime=TAR_MTIME) as sink:
            for key, _ in s.items:  # results arrive in job order: this shard's items come next
                jpg, why = next(results)
                bar.update()
                if jpg is None:
                    skipped.append(why)
                    continue
                sink.write({"__key__": key, "jpg": jpg})
                written.append(key)
        if not written:
            tmp.unlink()  # no file: an empty tar would starve a reader
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
            shutil.rmtree(old) if old.is_dir() else old.unlink()

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
