"""The width trade-off: runs trained at different widths with the same budget, side by side.

    python -m benchmarks.widths --runs runs/width32 runs/width16 runs/width8 \
        --content ../shared/assets/content/val --out docs/widths

For every run: parameters, ms per image at 512² and 1080p of the served `.pt2` and of the plain
reference network of the same width (each in a fresh worker process, as `make bench`), and the
training loss terms on the validation photos (`pipeline.quality.evaluate`, short side 256); then
`table.md`, `widths.json` and a figure of one photo at every width (`widths.jpg`) in OUT.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import run_worker

SIZES = {"512": (1, 5), "1080p": (1, 3)}  # size → (warm-up, repeats)


def measure(run: Path, variant: str, size: str) -> float:
    """Median ms per image of one batch-1 call in a fresh process."""
    warm, reps = SIZES[size]
    res = run_worker("benchmarks.infer", ["--variant", variant, "--size", size, "--run", str(run), "--warmup", str(warm),
                                          "--repeats", str(reps), "--batches", "1"])
    if "error" in res:
        raise RuntimeError(res["error"])
    return 1000 * res["batches"]["1"]["median_s"]


def losses(run: Path, content: Path, limit: int, out: Path) -> dict[str, float]:
    from pipeline.quality.evaluate import evaluate, list_photos
    from pipeline.quality.gatys import build_loss
    from pipeline.common.image_sources import load_style
    from pipeline.serve.model_io import load_model

    model, meta = load_model(run / "checkpoints" / "last.ckpt")
    hp = meta["hyper_parameters"]
    loss = build_loss(load_style(hp["style_image"], hp.get("style_size", 256)), hp)
    result = evaluate(model, loss, list_photos(content, limit), 256, out / "eval" / run.name, label=run.name)
    return {k: result["mean"][k] for k in ("style", "content", "tv", "total")}


def figure(runs: list[Path], photo: str, path: Path) -> None:
    from pipeline.quality.figures import side_by_side
    from pipeline.common.image_sources import load_image
    from pipeline.common.image_codec import resize_short
    from pipeline.serve.controls import call_model
    from pipeline.serve.model_io import load_model

    x = resize_short(load_image(photo)[None], 256)
    panels = [x[0]]
    for run in runs:
        model, _ = load_model(run / "export" / "generator.pt2")
        with torch.inference_mode():  # as a request without options: first style, full strength
            panels.append(call_model(model, x, None, model.instyle_controls)[0].clamp(0, 1))
    side_by_side(panels).save(path, quality=88)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| width | parameters | ms 512² (ours / reference) | ms 1080p (ours / reference) | style | content | total |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['parameters'] / 1e6:.3f} M | {r['ms']['512']['export']:.0f} / "
                     f"{r['ms']['512']['reference']:.0f} | {r['ms']['1080p']['export']:.0f} / {r['ms']['1080p']['reference']:.0f} | "
                     f"{r['losses']['style']:.3f} | {r['losses']['content']:.3f} | {r['losses']['total']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.widths", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="trained run folders (runs/NAME)")
    p.add_argument("--content", type=Path, required=True, help="validation photos")
    p.add_argument("--limit", type=int, default=8, help="validation photos evaluated")
    p.add_argument("--photo", default="skimage:chelsea", help="the figure's photo (a file or skimage:<name>)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from pipeline.export.exporter import export_run
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs:
        export_run(run, formats=("pt2",))
        meta = json.loads((run / "export" / "metadata.json").read_text())
        state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        n_params = sum(v.numel() for k, v in state.items() if k.startswith("generator."))
        ms = {size: {v: measure(run, v, size) for v in ("export", "reference")} for size in SIZES}
        rows.append({"run": str(run), "width": meta["generator_kwargs"]["width"], "steps": meta["global_step"],
                     "parameters": n_params, "ms": ms, "losses": losses(run, args.content, args.limit, args.out)})
        print(json.dumps(rows[-1]), flush=True)
    figure(args.runs, args.photo, args.out / "widths.jpg")
    (args.out / "widths.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "table.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
