"""The `loader` section of `make bench`: images/s of the training DataLoader at the `gpu` preset's settings.

The loader is `ContentDataModule.train_dataloader()` as training builds it (shards drawn with
replacement, shuffle buffer, decode, resize, random crop, flip, to tensor, batching), with the crop,
resize and batch size read from pipeline/train/configs/gpu.yaml, and nothing consuming the batches:
what the loader alone can deliver. Each worker count runs in a fresh process (`python -m
benchmarks.loader --data DIR --workers N` is that worker). Two rates: `steady`, over the timed batches
after the first 2 × workers (the DataLoader's prefetch, produced while the workers started, would
inflate it), and `with_start`, from creating the iterator to the last batch. The machine's load average
is recorded with each case: the loader competes for the same cores as everything else.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from benchmarks.common import ROOT, run_worker

PRESET = ROOT / "pipeline" / "train" / "configs" / "gpu.yaml"
WORKERS, QUICK_WORKERS = (1, 2, 8, 16), (1, 2)  # 1: the per-worker rate, which sizes num_workers
BATCHES, QUICK_BATCHES = 96, 12
DEFAULT_SHARDS = ROOT / "data" / "shards" / "bsds"  # `make shards` of the shared photos, when present


def preset_data() -> dict[str, Any]:
    """The gpu preset's crop, resize and batch size (its `data` section)."""
    data = yaml.safe_load(PRESET.read_text())["data"]
    return {k: data[k] for k in ("image_size", "resize", "batch_size")}


def shards_for(data: Path | None) -> Path:
    """The shards to read: `data` (must hold train-*.tar), else DEFAULT_SHARDS, else the built-in sample shards."""
    if data is not None:
        if not sorted(data.glob("train-*.tar")):
            raise ValueError(f"--shards {data}: no train-*.tar shards there (make them with `make shards`)")
        return data
    if sorted(DEFAULT_SHARDS.glob("train-*.tar")):
        return DEFAULT_SHARDS
    from pipeline.data.builtin_photos import SAMPLE_SHARDS, ensure_sample_shards

    return ensure_sample_shards(ROOT / SAMPLE_SHARDS)


def measure(data_dir: Path, workers: int, batches: int) -> dict[str, Any]:
    """One worker count, in this process: time of each batch from the loader's iterator."""
    from pipeline.data.datamodule import ContentDataModule

    settings = preset_data()
    skip = 2 * workers  # the DataLoader's default prefetch: 2 batches per worker
    dm = ContentDataModule(str(data_dir), num_workers=workers, steps_per_epoch=skip + batches, **settings)
    dm.setup("fit")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    stamps = []
    for _ in dm.train_dataloader():
        stamps.append(time.perf_counter() - t0)
    images = settings["batch_size"]
    return {"workers": workers, **settings, "batches": len(stamps), "first_batch_s": stamps[0],
            "steady_images_per_s": images * batches / (stamps[-1] - stamps[skip - 1]),
            "with_start_images_per_s": images * len(stamps) / stamps[-1],
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def bench_loader(data: Path | None, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """{shards, rows: one per worker count}, each count in a fresh process."""
    shards = shards_for(data).resolve()
    rows = []
    for w in QUICK_WORKERS if quick else WORKERS:
        log(f"loader {w} workers ({shards})")
        rows.append(run_worker("benchmarks.loader", ["--data", str(shards), "--workers", str(w),
                                                     "--batches", str(QUICK_BATCHES if quick else BATCHES)]))
    return {"shards": str(shards), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description="one worker count of the `loader` "
                                "section, in this process; prints one JSON line")
    p.add_argument("--data", type=Path, required=True, help="shards folder (train-*.tar) from `make shards`")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--batches", type=int, default=BATCHES, help="timed batches, after the prefetch")
    args = p.parse_args(argv)
    if args.workers < 1 or args.batches < 2:
        p.error("--workers must be ≥ 1 and --batches ≥ 2")
    print(json.dumps(measure(shards_for(args.data), args.workers, args.batches)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
