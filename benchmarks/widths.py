"""The `widths` section of `make bench`: the generator at widths 32, 16 and 8, served `.pt2` against the reference.

For each width: parameters, and ms per image (batch 1, each case in a fresh worker process as the
`infer` section) of the served `.pt2` and of the plain reference network of the same width, at 512²
(and 1080p without `--quick`). By default the generators are seeded, untrained presets' models
(`benchmarks.common.make_run`: speed does not depend on the weights). With `--width-runs` the section
measures those trained runs instead and adds their training loss terms on `--width-content` photos
(`pipeline.quality.evaluate`, short side 256): the quality side of the trade-off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import make_run, run_worker

WIDTHS = (32, 16, 8)
SIZES = {"512": (1, 5), "1080p": (1, 3)}  # size → (warm-up, repeats)
QUICK_SIZES = {"512": (1, 2)}
VARIANTS = ("export", "reference")  # the served .pt2 and the yardstick of the same width


def measure(run: Path, variant: str, size: str, warm: int, reps: int) -> float:
    """Median ms per image of one batch-1 call in a fresh process."""
    res = run_worker("benchmarks.infer", ["--variant", variant, "--size", size, "--run", str(run), "--warmup", str(warm),
                                          "--repeats", str(reps), "--batches", "1"])
    if "error" in res:
        raise RuntimeError(res["error"])
    return 1000 * res["batches"]["1"]["median_s"]


def losses(run: Path, content: Path, limit: int, out: Path) -> dict[str, float]:
    """A trained run's weighted loss terms on the first `limit` photos of `content`, at full strength."""
    from pipeline.common.image_sources import image_files, load_style
    from pipeline.loss.losses import build_loss
    from pipeline.quality.evaluate import evaluate
    from pipeline.serve.model_io import load_model

    model, meta = load_model(run / "checkpoints" / "last.ckpt")
    hp = meta["hyper_parameters"]
    loss = build_loss(load_style(hp["style_image"], hp.get("style_size", 256)), hp)
    result = evaluate(model, loss, image_files(content)[:limit or None], 256, out / "eval" / run.name, label=run.name)
    return {k: result["mean"][k] for k in ("style", "content", "tv", "total")}


def generator_parameters(run: Path) -> tuple[int, int]:
    """(width, parameter count) of a run's generator, read from its checkpoint."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("generator.")}
    width = int(ckpt["hyper_parameters"].get("width", 32))
    return width, sum(v.numel() for v in state.values())


def bench_widths(work: Path, quick: bool, log: Callable[[str], None], runs: list[Path] | None = None,
                 content: Path | None = None, limit: int = 8) -> list[dict[str, Any]]:
    """One row per width: {width, parameters, trained, ms: {size: {variant: ms}}, losses (trained runs only)}."""
    from pipeline.export.exporter import export_run

    trained = bool(runs)
    if runs:
        for run in runs:
            if not (run / "checkpoints" / "last.ckpt").is_file():
                raise ValueError(f"--width-runs {run}: no checkpoints/last.ckpt there")
            export_run(run, formats=("pt2",))
    else:
        runs = [make_run(work / "runs" / f"width{w}", kind="preset", width=w, formats=("pt2",)) for w in WIDTHS]
    rows = []
    for run in runs:
        width, n_params = generator_parameters(run)
        ms: dict[str, dict[str, float]] = {}
        for size, (warm, reps) in (QUICK_SIZES if quick else SIZES).items():
            for variant in VARIANTS:
                log(f"widths {width:3d} {variant:9s} {size}")
                ms.setdefault(size, {})[variant] = measure(run, variant, size, warm, reps)
        row: dict[str, Any] = {"run": str(run), "width": width, "parameters": n_params,
                               "trained": trained, "ms": ms}
        if trained and content is not None:
            log(f"widths {width:3d} losses on {content}")
            row["losses"] = losses(run, content, limit, work / "widths")
        rows.append(row)
    return rows
