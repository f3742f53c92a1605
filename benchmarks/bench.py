"""`make bench` (= `python -m benchmarks.bench`): the reference and the project's paths side by side.

    python -m benchmarks.bench [--quick] [--sections infer,train,serve,tiling,video,widths,loader,web]
        [--variants ...] [--rounds N] [--shards DIR] [--width-runs RUN ...] [--width-content DIR] [--out FILE]

Two models with the same seeded weights where they share them: `preset`, the generator `make train`
builds (one style, the strength control: conditional norms and the strength path), measured in every
section, and `plain` (the paper's and the reference's architecture), for inference and training.
Inference (256², 512², 1920×1080; batch 1 and 4), training (128² and 256², batch 4), serving
(TorchServe, 512², concurrency 1/4/8, with and without batching), tiled 4K inference, video
(frames/s of the video path at 640×360 and 1920×1080, batch 1 and 4, and decode + stylize + encode
of a short H.264 clip; on a CUDA machine also bf16 at batch 8), widths (the served `.pt2` and the
reference at widths 32, 16, 8: `benchmarks.widths`), the training loader (images/s per worker count:
`benchmarks.loader`) and the web page (frames/s in headless Chromium: `benchmarks.web_fps`), each case in a
fresh process. On a CPU with native bf16 the served .pt2 is also
measured with bf16 convolutions (`export-bf16`: what `precision: auto` serves there), and the video rows
run at `auto`. Prints a table with ratios to the reference and writes benchmarks/results-<machine>.json.
Not a test: numbers depend on the machine and on whatever else runs on it, so run it on an otherwise
idle machine. See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MODEL_KINDS, ROOT, machine_info, machine_slug, make_run, run_worker
from benchmarks.report import print_report, served_variant, targets
from pipeline.common.cpu import native_bf16

# size: (warm-up calls, timed calls at batch 1, timed calls at batch 4)
REPEATS = {"256": (2, 10, 5), "512": (1, 5, 3), "1080p": (1, 2, 1)}
QUICK_REPEATS = {"256": (1, 3, 2), "512": (1, 2, 1)}
TRAIN_STEPS = {128: (1, 4), 256: (1, 3)}  # (warm-up, timed) steps
QUICK_TRAIN_STEPS = {128: (1, 2)}
SECTIONS = ("infer", "train", "serve", "tiling", "video", "widths", "loader", "web")
# video: (WxH, frames) per size through the per-frame path; frames of the end-to-end clip
VIDEO_SIZES, QUICK_VIDEO_SIZES = (("640x360", 16), ("1920x1080", 4)), (("640x360", 6),)
VIDEO_CLIP_FRAMES, QUICK_VIDEO_CLIP_FRAMES = 48, 12
CUDA_VIDEO_FRAMES, CUDA_VIDEO_MAX_MEMORY_MB = 32, 16384  # GPU: batch 8 in one call even at 1080p
DEFAULT_VARIANTS = ("reference", "eager", "torchscript", "export", "onnxruntime", "export-bf16")
PLAIN_VARIANTS = ("reference", "eager", "export", "export-bf16")  # the plain model next to the preset one: the served form


def style_path(work: Path) -> Path:
    """The shared painting when present, else a generated image (speed does not depend on it)."""
    shared = ROOT.parent / "shared" / "assets" / "styles" / "starry_night.jpg"
    if shared.exists():
        return shared
    from PIL import Image

    from benchmarks.common import photo_uint8

    path = work / "style.png"
    Image.fromarray(photo_uint8(256, 256, seed=7)).save(path)
    return path


def worker_env(variant: str) -> dict[str, str]:
    """The reference runs as plain PyTorch, without the allocator setting that our paths make
    (pipeline.common.memory.reuse_freed_memory, see docs/benchmarks.md)."""
    return {"INSTYLE_REUSE_FREED_MEMORY": "0"} if variant == "reference" else {}


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's row from its rounds (fresh processes, interleaved with the other cases): per batch size the
    median over rounds of each round's median time; every round's own figures are kept under `rounds`."""
    if len(results) == 1:
        return results[0]
    merged = {**results[0], "rounds": results, "batches": {}}
    for batch, first in results[0]["batches"].items():
        median = statistics.median(r["batches"][batch]["median_s"] for r in results)
        merged["batches"][batch] = {**first, "median_s": median, "images_per_s": int(batch) / median,
                                    "gflops": first["gflops"] * first["median_s"] / median,
                                    "min_s": min(r["batches"][batch]["min_s"] for r in results),
                                    "peak_rss_mb": max(r["batches"][batch]["peak_rss_mb"] for r in results)}
    return merged


def bench_inference(runs: dict[str, Path], work: Path, variants: list[str], quick: bool, log,
                    rounds: int = 1) -> tuple[list[dict], dict]:
    """Every variant on the preset model, PLAIN_VARIANTS on the plain one; each output compared with the
    reference's on the same weights (for the preset model: the plain network with its resolved γ, β).
    With `rounds` > 1 every case of a size runs that many times, the cases interleaved (reference, ours,
    reference, ...), so that the machine's drift falls on all of them alike (`merge_rounds`)."""
    rows, diffs = [], {}
    outputs = work / "outputs"
    for size, (warm, reps, reps_b) in (QUICK_REPEATS if quick else REPEATS).items():
        cases = [(kind, run, variant) for kind, run in runs.items()
                 for variant in (variants if kind == "preset" else [v for v in variants if v in PLAIN_VARIANTS])]
        done: dict[tuple[str, str], list[dict]] = {}
        for rnd in range(rounds):
            for kind, run, variant in cases:
                log(f"infer {kind:6s} {variant:12s} {size}" + (f" (round {rnd + 1}/{rounds})" if rounds > 1 else ""))
                res = run_worker("benchmarks.infer", ["--variant", variant, "--size", size, "--run", str(run),
                                                      "--warmup", str(warm), "--repeats", str(reps),
                                                      "--repeats-batched", str(reps_b), "--save", str(outputs / kind)],
                                 env=worker_env(variant))
                done.setdefault((kind, variant), []).append(res)
        for (kind, variant), results in done.items():
            rows.append({**merge_rounds(results), "model": kind})
        for kind in runs:
            kind_variants = [v for k, v in done if k == kind]
            ref_file = outputs / kind / f"reference-{size}.pt"
            for variant in kind_variants:
                out_file = outputs / kind / f"{variant}-{size}.pt"
                if variant != "reference" and ref_file.exists() and out_file.exists():
                    ref, out = torch.load(ref_file, weights_only=True), torch.load(out_file, weights_only=True)
                    diffs[f"{kind}/{variant}@{size}"] = (out - ref).abs().max().item() if out.shape == ref.shape else float("inf")
    return rows, diffs


def bench_training(runs: dict[str, Path], work: Path, quick: bool, log) -> list[dict]:
    """The reference's step, ours on the plain model (same losses as the reference) and ours on the preset
    model (strengths drawn per sample, as `make train` does); on a CPU with native bf16 also the preset
    model under `bf16-mixed` (`ours-bf16`: what the `cpu` preset trains with there); and a style added to the
    preset model (`make train FROM=`): `adapt-new_styles` (its rows only) and `adapt-all` (with replay)."""
    rows, style = [], style_path(work)
    cases = [("plain", "reference"), ("plain", "ours"), ("preset", "ours"), ("preset", "adapt-new_styles"),
             ("preset", "adapt-all")]
    if native_bf16():
        cases.append(("preset", "ours-bf16"))
    for size, (warm, steps) in (QUICK_TRAIN_STEPS if quick else TRAIN_STEPS).items():
        for kind, variant in cases:
            log(f"train {kind:6s} {variant:10s} {size}")
            precision = ["--precision", "bf16-mixed"] if variant.endswith("-bf16") else []
            res = run_worker("benchmarks.train_step", ["--variant", variant.removesuffix("-bf16"), "--size", str(size),
                                                       "--run", str(runs[kind]), "--style", str(style), "--warmup",
                                                       str(warm), "--steps", str(steps), *precision],
                             env=worker_env(variant))
            rows.append({**res, "variant": variant, "model": kind})
    return rows


def bench_video(run: Path, work: Path, quick: bool, log) -> dict[str, Any]:
    """The served .pt2 on video frames (CPU at `auto`, batch 1 and the `stylize` default 4; CUDA bf16,
    batch 1 and 8, when there is a GPU), and decode + stylize + encode of a synthetic clip."""
    rows = []
    for size, frames in QUICK_VIDEO_SIZES if quick else VIDEO_SIZES:
        log(f"video cpu {size}")
        rows.append(run_worker("benchmarks.video", ["--run", str(run), "--size", size, "--frames", str(frames)]))
        if torch.cuda.is_available():  # not run on the 2-vCPU VM (no GPU)
            log(f"video cuda {size}")
            rows.append(run_worker("benchmarks.video", ["--run", str(run), "--size", size, "--device", "cuda", "--precision", "bf16",
                                                        "--batches", "1,8", "--frames", str(CUDA_VIDEO_FRAMES),
                                                        "--max-memory", str(CUDA_VIDEO_MAX_MEMORY_MB)]))
    log("video end to end")
    clip = run_worker("benchmarks.video", ["--run", str(run), "--end-to-end", "--size", "640x360", "--work",
                                           str(work / "video"), "--frames",
                                           str(QUICK_VIDEO_CLIP_FRAMES if quick else VIDEO_CLIP_FRAMES)])
    return {"rows": rows, "end_to_end": clip}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="256² and 512² only, fewer repeats, short training, "
                   "video at 640×360 only, widths at 512² only, the loader with 1 and 2 workers, 2 s of web frames")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="inference variants (benchmarks.infer)")
    p.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results-<machine>.json)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--shards", type=Path, default=None, help="loader: shards folder (default data/shards/bsds "
                   "when present, else the built-in sample shards)")
    p.add_argument("--width-runs", type=Path, nargs="+", default=None, help="widths: trained runs (runs/NAME) "
                   "instead of seeded generators at widths 32, 16, 8; with --width-content also their losses")
    p.add_argument("--width-content", type=Path, default=None, help="widths: photos the trained runs' losses are "
                   "measured on (e.g. ../shared/assets/content/val)")
    p.add_argument("--rounds", type=int, default=1, help="inference: run every case this many times, interleaved, "
                   "and report the median (a noisy machine's drift then falls on every case alike)")
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    if args.rounds < 1:
        p.error(f"--rounds must be ≥ 1, got {args.rounds}")
    if args.width_content is not None and not args.width_runs:
        p.error("--width-content needs --width-runs (seeded generators have no losses worth measuring)")
    for run_dir in args.width_runs or []:
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            p.error(f"--width-runs {run_dir}: no checkpoints/last.ckpt there")
    if args.shards is not None and not sorted(args.shards.glob("train-*.tar")):
        p.error(f"--shards {args.shards}: no train-*.tar shards there (make them with `make shards`)")
    variants = [v for v in args.variants.split(",") if v]
    if not native_bf16() and args.variants == p.get_default("variants"):
        # emulated bf16 is many times slower than fp32 (docs/benchmarks.md): not what `auto` runs here
        variants = [v for v in variants if not v.endswith("-bf16")]
    if "reference" not in variants:
        variants.insert(0, "reference")
    info = machine_info()
    out = args.out or ROOT / "benchmarks" / f"results-{machine_slug(info)}.json"
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {msg}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "machine": info, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="instyle-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if set(sections) & {"infer", "train", "serve", "tiling", "video", "web"}:
            log("exporting the benchmark generators (.pt, .pt2, .onnx): " + ", ".join(MODEL_KINDS))
            runs = {kind: make_run(work / "runs" / f"bench-{kind}", kind=kind) for kind in MODEL_KINDS}
            run = runs["preset"]  # serving, tiling and video: the model users serve
        if "infer" in sections:
            results["inference"], results["same_output_max_abs_diff"] = bench_inference(runs, work, variants, args.quick,
                                                                                        log, args.rounds)
        if "train" in sections:
            results["training"] = bench_training(runs, work, args.quick, log)
        if "serve" in sections:
            from benchmarks.serving import bench_serving
            from pipeline.serve.precision import resolve_precision

            # the model-only rate the served one is compared with, measured next to the load, before and after
            # (this VM's speed drifts by tens of % within minutes: a rate from the inference section is too far)
            served = served_variant({"serving": {"precision": resolve_precision("auto", "cpu")}})  # as the workers
            served_args = ["--variant", served, "--size", "512", "--run", str(run), "--batches", "1", "--repeats", "5"]
            before = run_worker("benchmarks.infer", served_args)

            log("serving (TorchServe)")
            conc = (1, 4) if args.quick else (1, 4, 8)
            try:
                results["serving"] = bench_serving(run, work / "serve", conc, per_client=2 if args.quick else 3)
            except Exception as e:  # noqa: BLE001 - a missing Java must not lose the other sections
                results["serving"] = {"error": f"{type(e).__name__}: {e}"}
            results["serving_model_only"] = [before, run_worker("benchmarks.infer", served_args)]
        if "tiling" in sections:
            log("tiled inference")
            results["tiling"] = {
                "exact": run_worker("benchmarks.tiling", ["--run", str(run), "--check", "--size",
                                                          "512x768" if args.quick else "1080x1920"]),
                "large_tiled": run_worker("benchmarks.tiling", ["--run", str(run), "--size",
                                                       "1080x1920" if args.quick else "2160x3840"]),
                "large_untiled": None if args.quick else run_worker(
                    "benchmarks.tiling", ["--run", str(run), "--size", "2160x3840", "--untiled"]),
            }
        if "video" in sections:
            results["video"] = bench_video(run, work, args.quick, log)
        if "widths" in sections:
            from benchmarks.widths import bench_widths

            results["widths"] = bench_widths(work, args.quick, log, args.width_runs, args.width_content)
        if "loader" in sections:
            from benchmarks.loader import bench_loader

            results["loader"] = bench_loader(args.shards, args.quick, log)
        if "web" in sections:
            from benchmarks.web_fps import bench_web

            log("web page frames/s (headless Chromium)")
            results["web"] = bench_web(run, work, args.quick)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["targets"] = targets(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    print(f"\nwritten {out} ({results['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
