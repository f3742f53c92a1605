"""`make gpu-check` (= `python -m benchmarks.gpu_check`): train, export and serve on one GPU, end to end.

    python -m benchmarks.gpu_check [--dry-run] [--data SHARDS_DIR] [--style IMG] [--steps N] [--out FILE]

1. a bf16-mixed `fit` of the `gpu` preset through the real CLI (`python -m pipeline fit`, a subprocess):
   training images/s from its ThroughputMonitor scalars, between the first and the last log interval
   (so start-up, cuDNN's algorithm search and the first steps are left out);
2. `python -m pipeline export` of that run: .pt, .pt2, .onnx;
3. each form loaded by the real TorchServe handler on the device (`gpu_id` in the context's system
   properties, as TorchServe sets it) and one batch of a 1080p and a 12 MP photo served through it;
4. 1080p frames/s of the run's eager generator in fp32 / bf16 / fp16, each eager and torch.compile'd,
   timed on the device's clock (CUDA events).

Prints a table and writes the figures as JSON (default benchmarks/results-gpu-check-<machine>.json);
exits 1 if any step failed. About 5 minutes on an H100/H200. Without a CUDA device, or with --dry-run,
it runs the same steps at toy sizes (3 steps of 64 px crops, 72×128 and 96×128 photos, torch.compile
with the `eager` backend: Dynamo's capture without code generation): a check of the check, in a
few minutes on a CPU. Not a test: the figures depend on the machine. See docs/benchmarks.md (GPU).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench import style_path
from benchmarks.common import ROOT, machine_info, machine_slug
from benchmarks.gpu_serve import FORMS, frame_rates, serve_forms, serving_failures

PRESET = ROOT / "pipeline" / "train" / "configs" / "gpu.yaml"
RUN_NAME = "gpu-check"
# full: the gpu preset as it is (256 px crops, batch 16, 8 workers, bf16-mixed), a few hundred steps
FULL = {"steps": 300, "fit_args": [], "frame": (1080, 1920), "images": {"1080p": (1080, 1920), "12MP": (3000, 4000)},
        "warmup": 5, "repeats": 30, "compile_backend": "inductor"}
# dry run: the sizes of tests/test_train.py's TINY runs; every log interval, for two throughput points
DRY = {"steps": 3, "fit_args": ["--data.image_size=64", "--data.resize=80", "--data.val_size=64", "--data.batch_size=2",
                                "--data.num_workers=0", "--model.style_size=128", "--trainer.limit_val_batches=1",
                                "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"],
       "frame": (72, 128), "images": {"1080p": (72, 128), "12MP": (96, 128)}, "warmup": 1, "repeats": 3,
       "compile_backend": "eager"}


def cli(args: list[str], timeout: float) -> tuple[float, str]:
    """`python -m pipeline ARGS` in the project root; (seconds, output tail), or RuntimeError with the tail."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())
    tail = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"python -m pipeline {' '.join(args[:1])} exited {proc.returncode}:\n{tail}")
    return time.monotonic() - t0, tail


def fit_args(settings: dict[str, Any], runs: Path, style: Path, data: Path | None, cuda: bool) -> list[str]:
    steps = settings["steps"]
    args = ["fit", "--config", str(PRESET), f"--model.style_image={style}", f"--trainer.max_steps={steps}",
            f"--data.steps_per_epoch={steps}",  # one epoch: it ends at max_steps with validation and last.ckpt
            f"--trainer.logger.init_args.save_dir={runs}", f"--trainer.logger.init_args.name={RUN_NAME}",
            *settings["fit_args"]]
    if not cuda:
        args.append("--trainer.accelerator=cpu")  # same precision (bf16-mixed), on the CPU
    if data is not None:
        args.append(f"--data.data_dir={data}")
    return args


def training_rate(run: Path) -> dict[str, Any]:
    """Images/s of the fit from ThroughputMonitor's cumulative `train/samples` and `train/time` (validation
    excluded by the monitor), between its first and last logged points."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    tags = set(acc.Tags()["scalars"])
    if not {"train/samples", "train/time"} <= tags:
        raise RuntimeError(f"the fit logged no ThroughputMonitor scalars in {run} (tags: {sorted(tags)})")
    samples, times = ([e.value for e in acc.Scalars(t)] for t in ("train/samples", "train/time"))
    if len(samples) < 2 or times[-1] <= times[0]:
        raise RuntimeError(f"need two ThroughputMonitor points with time between them, got {len(samples)}")
    steps = [e.step for e in acc.Scalars("train/samples")]
    # logged after steps[0] + 1 and steps[-1] + 1 steps: the rate is that of the steps in between
    return {"images_per_s": (samples[-1] - samples[0]) / (times[-1] - times[0]), "from_step": steps[0] + 2,
            "to_step": steps[-1] + 1, "first_interval_s": times[0], "images": samples[-1]}


def run_check(settings: dict[str, Any], work: Path, style: Path, data: Path | None, device: torch.device,
              log) -> dict[str, Any]:
    """The four steps of the module docstring; a failed fit or export ends the check with its error."""
    out: dict[str, Any] = {}
    runs = work / "runs"
    log(f"fit: gpu preset, {settings['steps']} steps on {device.type}")
    seconds, _ = cli(fit_args(settings, runs, style, data, device.type == "cuda"), timeout=1200)
    out["training"] = {"fit_s": seconds, "steps": settings["steps"], **training_rate(runs / RUN_NAME)}
    log("export: " + ", ".join(FORMS))
    seconds, _ = cli(["export", "--run", str(runs / RUN_NAME)], timeout=900)
    out["export"] = {"export_s": seconds, "files": {f: (runs / RUN_NAME / "export" / f"generator.{f}").stat().st_size
                                                    for f in FORMS}}
    log("serving: each form through the handler, " + " + ".join(settings["images"]))
    out["serving"] = serve_forms(runs / RUN_NAME / "export", device, settings["images"])
    h, w = settings["frame"]
    log(f"frames/s at {w}×{h}: fp32 / bf16 / fp16, eager and compiled ({settings['compile_backend']})")
    out["frames"] = {"size": [h, w], "rows": frame_rates(runs / RUN_NAME / "checkpoints" / "last.ckpt", device,
                                                         (h, w), settings["warmup"], settings["repeats"],
                                                         settings["compile_backend"])}
    return out


def failures(results: dict[str, Any]) -> list[str]:
    """Everything that failed or measured nothing finite."""
    bad = [results["error"]] if "error" in results else []
    bad += serving_failures(results.get("serving", []))
    rate = results.get("training", {}).get("images_per_s")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        bad.append(f"training images/s is {rate}")
    for row in results.get("frames", {}).get("rows", []):
        if "skipped" in row:
            continue
        if not (math.isfinite(row["frames_per_s"]) and row["frames_per_s"] > 0):
            bad.append(f"frames/s {row['precision']} compile={row['compile']}: {row['frames_per_s']}")
        if not row["finite_output"]:
            bad.append(f"{row['precision']} compile={row['compile']}: the generator's output is not finite")
    return bad


def table(results: dict[str, Any]) -> str:
    lines = []
    tr = results.get("training")
    if tr:
        lines.append(f"training ({'dry run' if results['dry_run'] else 'gpu preset'}, {tr['steps']} steps, "
                     f"{results['device']}): {tr['images_per_s']:.1f} images/s over steps {tr['from_step']}–"
                     f"{tr['to_step']}; fit {tr['fit_s']:.0f} s")
    ex = results.get("export")
    if ex:
        lines.append(f"export (.pt, .pt2, .onnx): {ex['export_s']:.0f} s")
    if results.get("serving"):
        lines += ["", "| form | device | load s | batch s | image | HTTP | max diff vs .pt2 (8-bit) |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["serving"]:
            if "error" in r:
                lines.append(f"| {r['form']} | ERROR {r['error'][:300]} | | | | | |")
                continue
            for name, e in r["images"].items():
                diff = "–" if r["form"] == "pt2" else e.get("max_diff_vs_pt2", "–")
                lines.append(f"| {r['form']} | {r['device']} | {r['load_s']:.1f} | {r['batch_s']:.2f} | {name} "
                             f"{e['size'][1]}×{e['size'][0]} | {e['status']} | {diff} |")
    frames = results.get("frames")
    if frames:
        h, w = frames["size"]
        lines += ["", f"| eager generator, {w}×{h}, batch 1 | compile | frames/s | ms / frame | first call s |",
                  "|---|---|---|---|---|"]
        for r in frames["rows"]:
            compiled = r["compile"] or "no"
            if "skipped" in r:
                lines.append(f"| {r['precision']} | {compiled} | skipped: {r['skipped']} | | |")
            else:
                lines.append(f"| {r['precision']} | {compiled} | {r['frames_per_s']:.2f} | {r['median_s'] * 1000:.1f} | "
                             f"{r['first_call_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="toy sizes (automatic without a CUDA device)")
    p.add_argument("--data", type=Path, default=None, help="shards folder (train-*.tar, val-*.tar); "
                   "default: the scikit-image sample shards training builds on first use")
    p.add_argument("--style", type=Path, default=None, help="style image (default: the shared painting, else a generated one)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {FULL['steps']}, dry run {DRY['steps']})")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor, dry run eager)")
    p.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results-gpu-check-<machine>.json)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for the run (default: a temporary one)")
    args = p.parse_args(argv)
    if args.data is not None and not sorted(args.data.glob("train-*.tar")):
        p.error(f"--data {args.data}: no train-*.tar shards there (make them with `make shards`)")
    if args.steps is not None and args.steps < 2:
        p.error("--steps must be ≥ 2: images/s is measured between two log intervals")
    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    settings = dict(DRY if dry else FULL)
    settings["steps"] = args.steps or settings["steps"]
    settings["compile_backend"] = args.compile_backend or settings["compile_backend"]
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    info = machine_info()
    out = args.out or ROOT / "benchmarks" / f"results-gpu-check-{machine_slug(info)}.json"
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {msg}", file=sys.stderr, flush=True)

    if not cuda:
        log("no CUDA device: dry run on the CPU")
    results: dict[str, Any] = {
        "machine": info, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.gpu_check " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "dry_run": dry, "device": str(device), "settings": settings}
    with tempfile.TemporaryDirectory(prefix="instyle-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            results.update(run_check(settings, work, args.style or style_path(work), args.data, device, log))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            results["error"] = f"{type(e).__name__}: {e}"
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["failures"] = failures(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    for f in results["failures"]:
        print(f"FAILED: {f}")
    print(f"\nwritten {out} ({results['elapsed_s']:.0f} s)")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
