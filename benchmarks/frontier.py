"""The cost/quality frontier of the generator designs (docs/compact.md, its one table).

    python -m benchmarks.frontier --rows runs/A=reports/eval-A runs/B ... [--speed_only_widths 8 16]
        [--quick] [--out docs/frontier/frontier.json]

For each run (a trained generator, any arch): multiply-accumulates per 640×360 frame, counted by
torch's FlopCounterMode on the inference form; frames/s of its web page (benchmarks.web_fps: headless
Chromium, wasm, cross-origin isolated, fake 640×360 webcam, the run's own model, median of 3); the
served `.pt2` at 512² and 1080p (benchmarks.infer's `export` variant, batch 1, a fresh process each)
and the same for the reference (the 2016 network at width 32, eager, benchmarks.reference) in the
same invocation, as a ratio; and, from `make eval`'s report given after `=` (REPORT/metrics.json), the
style and content losses and the contrast PSNR on its photos. `--speed_only_widths`: classic
generators of these widths, seeded and untrained (speed does not depend on the weights), as rows
without losses. Prints a markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_info, make_run, run_worker
from benchmarks.widths import measure

FRAME = (360, 640)
SIZES = {"512": (1, 5), "1080p": (1, 3)}
QUICK_SIZES = {"512": (1, 2), "1080p": (0, 1)}


def frame_macs(run: Path) -> tuple[float, dict[str, Any]]:
    """(MACs of one 640×360 frame through the inference form, the generator's description), from the
    run's exported `.pt2` (the eager generator its loader rebuilds)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.serve.model_io import load_model

    model, meta = load_model(run / "export" / "generator.pt2")
    kwargs = meta["generator_kwargs"]
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.instyle_generator.for_inference()(torch.rand(1, 3, *FRAME))  # its first style at full strength
    return counter.get_total_flops() / 2, {"arch": meta.get("arch", "residual"), "width": kwargs.get("width"),
                                           "n_residual": kwargs.get("n_residual"),
                                           "styles": kwargs.get("n_styles", 1)}


def page_fps(runs: list[Path], work: Path, quick: bool) -> dict[str, float]:
    """Median frames/s of each run's page (its own model on the webcam, wasm threads: one per core)."""
    out = work / "web-fps.json"
    res = run_worker("benchmarks.web_fps", ["--runs", *map(str, runs), "--own_model", "--repeat", "1" if quick else "3",
                                            "--seconds", "2" if quick else "5", "--out", str(out)], timeout=3600)
    if "error" in res:
        raise RuntimeError(res["error"])
    rows = json.loads(out.read_text())["rows"]
    return {r["run"]: r["fps"] for r in rows if r["isolated"]}


def eval_means(report: Path | None) -> dict[str, float] | None:
    """style, content, total and contrast PSNR from a `make eval` report folder (None: not given)."""
    if report is None:
        return None
    mean = json.loads((report / "metrics.json").read_text())["mean"]
    return {k: mean[k] for k in ("style", "content", "total", "contrast_psnr_db")}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | arch | width | blocks | GMAC per 640×360 | page frames/s | .pt2 512² ms (× ref) | "
             ".pt2 1080p ms (× ref) | style | content | contrast PSNR dB |", "|---" * 11 + "|"]
    for r in rows:
        ms = r["ms"]
        cells = [f"{ms[s]:.0f} ({ms[s] / r['reference_ms'][s]:.3f}×)" if s in ms else "—" for s in ("512", "1080p")]
        loss = r["losses"]
        scores = [f"{loss['style']:.3f}", f"{loss['content']:.3f}", f"{loss['contrast_psnr_db']:.1f}"] if loss \
            else ["—", "—", "—"]
        lines.append(f"| {r['run']} | {r['arch']} | {r['width']} | {r['n_residual']} | {r['gmac']:.2f} | "
                     f"{r['fps']:.1f} | {' | '.join(cells)} | {' | '.join(scores)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=[], help="RUN or RUN=REPORT (a `make eval` report folder)")
    p.add_argument("--speed_only_widths", type=int, nargs="*", default=[], help="untrained classic widths, speed only")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    p.add_argument("--out", type=Path, default=Path("frontier.json"))
    args = p.parse_args(argv)
    from pipeline.export.exporter import export_run

    sizes = QUICK_SIZES if args.quick else SIZES
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # absolute: the workers (benchmarks.infer, benchmarks.web_fps) run in the repository's folder
        specs = [(Path(r.partition("=")[0]).resolve(), Path(r.partition("=")[2]).resolve() if "=" in r else None)
                 for r in args.rows]
        specs += [(make_run(work / f"classic{w}", kind="preset", width=w, formats=("pt2", "onnx")), None)
                  for w in args.speed_only_widths]
        for run, _ in specs:
            if not all((run / "export" / f"generator.{f}").exists() for f in ("pt2", "onnx")):
                export_run(run, formats=("pt2", "onnx"))
        reference = make_run(work / "reference32", kind="plain", width=32, formats=("pt2",))
        reference_ms = {s: measure(reference, "reference", s, *wr) for s, wr in sizes.items()}
        fps = page_fps([run for run, _ in specs], work, args.quick)
        rows = []
        for run, report in specs:
            gmac, desc = frame_macs(run)
            ms = {s: measure(run, "export", s, *wr) for s, wr in sizes.items()}
            rows.append({"run": run.name, **desc, "gmac": gmac / 1e9, "fps": fps[run.name], "ms": ms,
                         "reference_ms": reference_ms, "losses": eval_means(report),
                         "trained": report is not None or run.parent != work})
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine_info(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python -m benchmarks.frontier " + " ".join(sys.argv[1:] if argv is None else argv), "rows": rows}
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
