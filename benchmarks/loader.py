"""Images/s of the training DataLoader at the `gpu` preset's settings, per worker count.

    python -m benchmarks.loader --data data/shards/bsds [--workers 1,2,8,16] [--batches 96] [--out FILE]

The loader is `ContentDataModule.train_dataloader()` as training builds it (shards drawn with
replacement, shuffle buffer, JPEG decode, resize, random crop, flip, to tensor, batching), with the
crop, resize and batch size read from pipeline/train/configs/gpu.yaml, and nothing consuming the
batches: what the loader alone can deliver. Each worker count runs in a fresh process
(`benchmarks.common.run_worker`). Two rates: `steady` over `--batches` batches after the first
2 × workers (the DataLoader's prefetch, produced while the workers started, would inflate it), and
`with_start` from creating the iterator to the last batch. The machine's load average is recorded
with each case: the loader competes for the same cores as everything else. Figures and what they
mean for the preset's `num_workers`: docs/scale.md#the-gpu-preset.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT, machine_info, machine_slug, run_worker

PRESET = ROOT / "pipeline" / "train" / "configs" / "gpu.yaml"
WORKERS = (1, 2, 8, 16)  # 1: the per-worker rate, which sizes num_workers


def preset_data() -> dict[str, Any]:
    """The gpu preset's crop, resize and batch size (its `data` section)."""
    data = yaml.safe_load(PRESET.read_text())["data"]
    return {k: data[k] for k in ("image_size", "resize", "batch_size")}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="shards folder (train-*.tar, val-*.tar) from `make shards`")
    p.add_argument("--workers", default=",".join(map(str, WORKERS)), help="comma-separated worker counts")
    p.add_argument("--batches", type=int, default=96, help="timed batches per worker count, after the prefetch")
    p.add_argument("--one", action="store_true", help="measure the single --workers count here (the per-case worker)")
    p.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results-loader-<machine>.json)")
    args = p.parse_args(argv)
    if not sorted(args.data.glob("train-*.tar")):
        p.error(f"--data {args.data}: no train-*.tar shards there (make them with `make shards`)")
    try:
        counts = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        p.error(f"--workers {args.workers!r}: give worker counts like 2,8,16")
    if not counts or min(counts) < 1 or args.batches < 2:
        p.error("--workers must be counts ≥ 1 and --batches ≥ 2")
    if args.one:
        print(json.dumps(measure(args.data.resolve(), counts[0], args.batches)))
        return 0
    info = machine_info()
    rows = []
    for w in counts:
        print(f"{w} workers ...", file=sys.stderr, flush=True)
        rows.append(run_worker("benchmarks.loader", ["--one", "--data", str(args.data.resolve()), "--workers", str(w),
                                                     "--batches", str(args.batches)]))
    results = {"machine": info, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "data": str(args.data), "rows": rows}
    out = args.out or ROOT / "benchmarks" / f"results-loader-{machine_slug(info)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nmachine: {info['cpu']}, {info['logical_cpus']} logical CPUs; gpu preset data settings: {preset_data()}")
    print("| workers | images/s steady | images/s with start-up | first batch s | load average before / after |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| ERROR {r['error'][:500]} | | | | |")
            continue
        print(f"| {r['workers']} | {r['steady_images_per_s']:.1f} | {r['with_start_images_per_s']:.1f} | "
              f"{r['first_batch_s']:.1f} | {r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} |")
    print(f"\nwritten {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
