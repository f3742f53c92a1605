"""`python -m pipeline style-report`: one N-style model against N single-style models trained with the
same steps per style, on the same validation photos, with the same loss.

- per style: style / content / total loss of the multi-style model and of that style's own model;
- strength sweep (models with the strength control): the losses at s = 0 … 1, which should trade
  style for content monotonically;
- the default strength (1) against a model trained without the control (`--plain`), same steps;
- ms per image of the exported `.pt2` (the served form) at 512², all models timed in turn in one
  process: N styles should cost nothing extra;
- with `--per_batch`, the validation curves of a style drawn per sample vs per batch.

Writes OUT/report.md and OUT/metrics.json.

    python -m pipeline style-report --multi runs/trio --singles '[runs/a,runs/b,runs/c]' \\
        --plain runs/a-plain --content ../shared/assets/content/val --out reports/multistyle
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.export.exporter import export_run
from pipeline.loss.losses import PerceptualLoss
from pipeline.quality.evaluate import list_photos
from pipeline.quality.gatys import build_loss
from pipeline.serve.controls import Conditioning, call_model
from pipeline.common.image_codec import resize_short
from pipeline.common.image_sources import load_image_file, load_style
from pipeline.serve.model_io import load_model
from pipeline.train.styles import style_specs

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
TIMING_SIZE = 512


def exported(run: Path) -> Path:
    """The run's generator.pt2, exported from checkpoints/last.ckpt when missing."""
    path = run / "export" / "generator.pt2"
    if not path.is_file():
        export_run(run, formats=("pt2",))
    return path


def losses(model: Any, loss: PerceptualLoss, photos: list[torch.Tensor], style: int, cond: Conditioning) -> dict[str, float]:
    """Mean weighted loss terms over the photos of `model` run with `cond`, against style `style` of `loss`."""
    rows = []
    with torch.inference_mode():
        for x in photos:
            y = call_model(model, x, [cond], model.instyle_controls).clamp(0, 1)
            rows.append({k: float(v) for k, v in loss(y, x, torch.tensor([style])).items()})
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


def one_hot(k: int, n: int, strength: float = 1.0) -> Conditioning:
    return Conditioning(tuple(1.0 if i == k else 0.0 for i in range(n)), strength)


def ms_per_image(models: dict[str, Any], rounds: int = 5) -> dict[str, float]:
    """Median ms of one TIMING_SIZE² image per model, the models timed in turn (same machine state)."""
    x = torch.rand(1, 3, TIMING_SIZE, TIMING_SIZE)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            for model in models.values():
                call_model(model, x, None, model.instyle_controls)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                call_model(model, x, None, model.instyle_controls)
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: round(statistics.median(t), 1) for name, t in times.items()}


def val_curve(run: Path, tag: str = "val/total") -> dict[int, float]:
    """step → value of a TensorBoard scalar the run logged (validation after every epoch)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    if tag not in acc.Tags()["scalars"]:
        raise ValueError(f"{run} logged no {tag}")
    return {e.step + 1: e.value for e in acc.Scalars(tag)}


def sampling_table(per_sample: Path, per_batch: Path, names: list[str]) -> list[dict[str, Any]]:
    """Validation losses (mean over styles, and per style) at the steps both runs reached: a style
    drawn per sample vs one per batch, same budget."""
    curves = {label: {tag: val_curve(run, tag) for tag in ["val/total", *[f"val/{n}/total" for n in names]]}
              for label, run in (("sample", per_sample), ("batch", per_batch))}
    steps = sorted(set(curves["sample"]["val/total"]) & set(curves["batch"]["val/total"]))
    return [{"step": step, **{f"{label}/{tag[4:]}": curves[label][tag][step] for label in curves for tag in curves[label]}}
            for step in steps]


def build_report(multi: Path, singles: list[Path], plain: Path | None, content: Path, size: int, limit: int,
                 per_batch: Path | None = None) -> dict[str, Any]:
    net, meta = load_model(exported(multi))
    names, hp = list(net.instyle_controls.styles), meta.get("hyper_parameters") or {}
    if len(singles) != len(names):
        raise ValueError(f"{multi} has {len(names)} styles ({', '.join(names)}); give one single-style run for each")
    loss = build_loss([load_style(s, hp.get("style_size", 256)) for s in style_specs(hp["style_image"])], hp)
    photos = [resize_short(load_image_file(p)[None], size) for p in list_photos(content, limit)]
    single_models = [load_model(exported(run))[0] for run in singles]
    report: dict[str, Any] = {"multi": str(multi), "styles": names, "photos": len(photos), "size": size,
                              "steps": meta.get("global_step"), "per_style": [], "strength": {}}
    for k, (name, single) in enumerate(zip(names, single_models)):
        report["per_style"].append({"style": name, "multi": losses(net, loss, photos, k, one_hot(k, len(names))),
                                    "single": losses(single, loss, photos, k, one_hot(0, 1)),
                                    "single_steps": load_model(exported(singles[k]))[1].get("global_step")})
    for label, model, n_styles, index in [(f"multi ({len(names)} styles)", net, len(names), None),
                                          *[(f"single {names[k]}", m, 1, k) for k, m in enumerate(single_models)]]:
        if not model.instyle_controls.strength:
            continue
        sweep = []
        for s in STRENGTHS:
            per = [losses(model, loss, photos, k if index is None else index, one_hot(0 if index is not None else k, n_styles, s))
                   for k in (range(n_styles) if index is None else [0])]
            sweep.append({"strength": s, **{t: statistics.fmean(p[t] for p in per) for t in per[0]}})
        report["strength"][label] = sweep
    timed = {f"{len(names)} styles + strength": net, **{f"1 style ({names[k]})": m for k, m in enumerate(single_models)}}
    if plain is not None:
        plain_model = load_model(exported(plain))[0]
        timed["1 style, no strength"] = plain_model
        first = single_models[0]
        report["default_vs_plain"] = {"style": names[0], "with_control": losses(first, loss, photos, 0, one_hot(0, 1)),
                                      "without_control": losses(plain_model, loss, photos, 0, one_hot(0, 1))}
    report["ms_per_image"] = ms_per_image(timed)
    if per_batch is not None:
        report["sampling"] = sampling_table(multi, per_batch, names)
    return report


def markdown(r: dict[str, Any]) -> str:
    """The report as markdown tables."""
    lines = [f"# {len(r['styles'])} styles in one model vs one model per style",
             f"{r['photos']} validation photos, short side {r['size']} px; multi-style model at step {r['steps']}.", "",
             "| style | multi: style | single: style | multi: content | single: content | multi: total | single: total |",
             "|---|---|---|---|---|---|---|"]
    for p in r["per_style"]:
        m, s = p["multi"], p["single"]
        lines.append(f"| {p['style']} | {m['style']:.3f} | {s['style']:.3f} | {m['content']:.3f} | {s['content']:.3f} | "
                     f"{m['total']:.3f} | {s['total']:.3f} |")
    for label, sweep in r["strength"].items():
        lines += ["", f"Strength sweep, {label} (mean over its styles):", "", "| strength | style | content | total |",
                  "|---|---|---|---|"]
        lines += [f"| {row['strength']} | {row['style']:.3f} | {row['content']:.3f} | {row['total']:.3f} |" for row in sweep]
    if "default_vs_plain" in r:
        d = r["default_vs_plain"]
        lines += ["", f"Default strength vs no strength control ({d['style']}, same steps):", "",
                  "| term | with control (s = 1) | without | difference |", "|---|---|---|---|"]
        for t in ("style", "content", "total"):
            a, b = d["with_control"][t], d["without_control"][t]
            lines.append(f"| {t} | {a:.3f} | {b:.3f} | {100 * (a - b) / b:+.1f} % |")
    lines += ["", f"ms per {TIMING_SIZE}² image (.pt2, CPU, median of 5):", "", "| model | ms |", "|---|---|"]
    lines += [f"| {name} | {ms} |" for name, ms in r["ms_per_image"].items()]
    if r.get("sampling"):
        names = r["styles"]
        lines += ["", "Validation total loss during training (TensorBoard `val/…`), a style per sample vs one per batch:", "",
                  "| step | per sample: mean | per batch: mean | " + " | ".join(f"sample / batch: {n}" for n in names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for row in r["sampling"]:
            per = " | ".join(f"{row[f'sample/{n}/total']:.3f} / {row[f'batch/{n}/total']:.3f}" for n in names)
            lines.append(f"| {row['step']} | {row['sample/total']:.3f} | {row['batch/total']:.3f} | {per} |")
    return "\n".join(lines) + "\n"


def command(*, multi: Path, singles: list[Path], content: Path, out: Path, plain: Path | None = None,
            per_batch: Path | None = None, size: int = 256, limit: int = 8) -> int:
    """Compare an N-style model with N single-style models: per-style losses, strength sweep, ms/image.

    Args:
        multi: run directory of the multi-style model (runs/NAME; exported if needed).
        singles: run directories of the single-style models, in the multi-style model's style order.
        content: folder of validation photos.
        out: report folder (report.md, metrics.json).
        plain: run trained without the strength control, for the first style, with the same steps.
        per_batch: the multi-style run trained with --model.style_sampling=batch, to compare validation curves.
        size: short side the photos are resized to, px.
        limit: the first N photos.
    """
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()
    try:
        report = build_report(multi, singles, plain, content, size, limit, per_batch)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(out, report, markdown(report))
    return 0


def write_report(out: Path, report: dict[str, Any], text: str) -> None:
    """OUT/metrics.json and OUT/report.md, and the markdown on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(text)
    print(text)
