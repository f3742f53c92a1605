"""The benchmark's table (printed, and pasted into docs/benchmarks.md) and its target checks."""
from __future__ import annotations

from typing import Any

SAME_OUTPUT_TOL = 1e-4  # max abs difference of [0, 1] images, ours vs reference, same weights
SAME_LOSS_RTOL = 1e-4  # relative difference of the first step's loss terms
SERVE_SHARE = 0.9  # served requests/s over the model-only images/s of the same file (1 process, all threads)
TARGET_TIME = {"1080p": 0.6, "512": 0.7, "256": 0.85}  # ours / reference latency, batch 1
SHIPPED = "export"  # the .pt2 that `make archive` serves, in fp32 (CPUs without native bf16, GPUs)
SHIPPED_BF16 = "export-bf16"  # the same on a CPU with native bf16 (`precision: auto`)
BF16_TARGET_TIME = {"512": 0.25}  # its latency / the reference's, batch 1
BF16_MAX_LEVELS = 2  # its max difference to the fp32 reference, in 8-bit levels
BF16_TRAIN_SPEEDUP = 1.5  # the preset model's bf16-mixed step (`ours-bf16`), images/s over the reference's
# Rows name their model: `preset` (what `make train` builds: the strength control on) or `plain`; results
# written before both were measured hold the plain model only.
PLAIN, PRESET = "plain", "preset"


def _kind(row: dict[str, Any]) -> str:
    return row.get("model", PLAIN)


def _target_kind(results: dict[str, Any]) -> str:
    """The model the targets judge: the presets' when it was measured (what users run), else the plain one."""
    rows = results.get("inference", []) + results.get("training", [])
    return PRESET if any(_kind(r) == PRESET for r in rows) else PLAIN


def _infer_index(results: dict[str, Any]) -> dict[tuple[str, str, str, str], dict]:
    """(model, variant, size, batch) → measurement."""
    index = {}
    for row in results.get("inference", []):
        for batch, m in row.get("batches", {}).items():
            index[(_kind(row), row["variant"], row["size"], batch)] = m
    return index


def _reference(idx: dict, kind: str, size: str, batch: str) -> dict | None:
    """The reference's measurement for a row: the same network function, so either model's reference row."""
    return idx.get((kind, "reference", size, batch)) or idx.get((PLAIN, "reference", size, batch))


def _train_index(results: dict[str, Any]) -> dict[tuple[str, str, int], dict]:
    return {(_kind(r), r["variant"], r["size"]): r for r in results.get("training", []) if "error" not in r}


def _loss_rel_diff(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in b)


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    idx = _infer_index(results)
    if idx:
        lines += ["| size | batch | model | path | ms / batch | images/s | GFLOP/s | peak RSS MB | time × ref | "
                  "max abs diff vs ref |", "|---|---|---|---|---|---|---|---|---|---|"]
        diffs = results.get("same_output_max_abs_diff", {})
        for (kind, variant, size, batch), m in idx.items():
            ref = _reference(idx, kind, size, batch)
            ratio = f"{m['median_s'] / ref['median_s']:.2f}" if ref else "–"
            diff = diffs.get(f"{kind}/{variant}@{size}", diffs.get(f"{variant}@{size}") if kind == PLAIN else None)
            lines.append(f"| {size} | {batch} | {kind} | {variant} | {m['median_s'] * 1000:.0f} | {m['images_per_s']:.2f} | "
                         f"{m['gflops']:.0f} | {m['peak_rss_mb']:.0f} | {ratio} | "
                         f"{'–' if diff is None or variant == 'reference' else f'{diff:.1e}'} |")
    for row in results.get("inference", []) + results.get("training", []):
        if "error" in row:
            lines.append(f"\nERROR: {row['error'][:500]}")
    tidx = _train_index(results)
    if tidx:
        lines += ["", "| training | batch | model | path | s / step | images/s | × ref images/s | first-step loss | "
                      "rel. diff vs ref |", "|---|---|---|---|---|---|---|---|---|"]
        for (kind, variant, size), r in sorted(tidx.items(), key=lambda kv: (kv[0][2], kv[0][1] != "reference", kv[0][0])):
            ref = tidx.get((PLAIN, "reference", size))
            ratio = f"{r['images_per_s'] / ref['images_per_s']:.2f}" if ref else "–"
            # the same losses only on the same function: the preset model's strengths are drawn per sample
            same = ref and variant != "reference" and kind == PLAIN
            rel = f"{_loss_rel_diff(r['losses'][0], ref['losses'][0]):.1e}" if same else "–"
            lines.append(f"| {size}² | {r['batch']} | {kind} | {variant} | {r['median_step_s']:.2f} | {r['images_per_s']:.2f} | "
                         f"{ratio} | {r['losses'][0]['total']:.4f} | {rel} |")
    serving = results.get("serving")
    if serving:
        if "error" in serving:
            lines.append(f"\nserving ERROR: {serving['error'][:500]}")
        else:
            model_only = _model_only(results)
            lines += ["", f"| serving 512² | concurrency | requests/s | p50 ms | p99 ms | errors | % of model-only "
                          f"({model_only:.2f} images/s) |" if model_only else "| serving | concurrency | requests/s | "
                          "p50 ms | p99 ms | errors | % of model-only |", "|---|---|---|---|---|---|---|"]
            for r in serving["rows"]:
                pct = f"{100 * r['requests_per_s'] / model_only:.0f} %" if model_only else "–"
                lines.append(f"| {r['model']} | {r['concurrency']} | {r['requests_per_s']:.2f} | "
                             f"{(r['p50_s'] or 0) * 1000:.0f} | {(r['p99_s'] or 0) * 1000:.0f} | {r['errors']} | {pct} |")
            big = serving.get("request_1080p")
            if big:
                peaks = ", ".join(f"{v:.0f}" for v in big["worker_peak_rss_mb"].values() if v is not None)
                lines.append(f"\n1080p JPEG request through TorchServe: HTTP {big['status']}, {big['seconds']:.1f} s, "
                             f"worker peak RSS {peaks} MB")
    tiling = results.get("tiling")
    if tiling:
        lines += ["", "| tiled inference | size | seconds | peak RSS MB | max abs diff tiled vs untiled |",
                  "|---|---|---|---|---|"]
        for key, r in tiling.items():
            if not r:
                continue
            if "error" in r:
                lines.append(f"| {key} | ERROR {r['error'][:300]} | | | |")
                continue
            diff = r.get("max_abs_diff")
            lines.append(f"| {key} | {r['size']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
                         f"{'–' if diff is None else f'{diff:.1e}'} |")
    lines += _video_lines(results.get("video"))
    lines += _widths_lines(results.get("widths"))
    lines += _loader_lines(results.get("loader"))
    lines += _web_lines(results.get("web"))
    return "\n".join(lines)


def _web_lines(web: dict[str, Any] | None) -> list[str]:
    """The web section: the page's frames/s per wasm thread count (benchmarks.web_fps's own table)."""
    if not web:
        return []
    if "error" in web:
        return [f"\nweb page ERROR: {web['error'][:500]}"]
    from benchmarks.web_fps import table as web_table

    return ["", web_table(web["rows"])]


def _widths_lines(rows: list[dict[str, Any]] | None) -> list[str]:
    """The widths section: parameters and ms per image (served .pt2 / reference of the same width) per size;
    the loss terms where trained runs were measured."""
    if not rows:
        return []
    sizes = list(rows[0]["ms"])
    trained = any("losses" in r for r in rows)
    lines = ["", "| width | parameters | " + " | ".join(f"ms {s}{'²' if s.isdigit() else ''} (export / reference)"
                                                       for s in sizes)
             + (" | style | content | total |" if trained else " |"),
             "|---|---|" + "---|" * (len(sizes) + (3 if trained else 0))]
    for r in rows:
        ms = " | ".join(f"{r['ms'][s]['export']:.0f} / {r['ms'][s]['reference']:.0f}" for s in sizes)
        loss = r.get("losses")
        tail = f" | {loss['style']:.3f} | {loss['content']:.3f} | {loss['total']:.3f} |" if loss else (
            " | | | |" if trained else " |")
        lines.append(f"| {r['width']} | {r['parameters'] / 1e6:.3f} M | {ms}{tail}")
    return lines


def _loader_lines(loader: dict[str, Any] | None) -> list[str]:
    """The loader section: images/s per worker count at the gpu preset's data settings."""
    if not loader:
        return []
    lines = ["", f"| loader ({loader['shards']}) workers | images/s steady | images/s with start-up | first batch s | "
                 "load average before / after |", "|---|---|---|---|---|"]
    for r in loader["rows"]:
        if "error" in r:
            lines.append(f"| ERROR {r['error'][:300]} | | | | |")
            continue
        lines.append(f"| {r['workers']} | {r['steady_images_per_s']:.1f} | {r['with_start_images_per_s']:.1f} | "
                     f"{r['first_batch_s']:.1f} | {r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} |")
    return lines


def _video_lines(video: dict[str, Any] | None) -> list[str]:
    """The video section: frames/s of the per-frame path per size, device and batch; the end-to-end line."""
    if not video:
        return []
    lines = ["", "| video (served .pt2, per-frame path) | device | precision | batch | frames | frames/s | "
                 "ms / frame | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for row in video.get("rows", []):
        if "error" in row:
            lines.append(f"| ERROR {row['error'][:300]} | | | | | | | |")
            continue
        for batch, m in row["batches"].items():
            calls = "" if m["one_call_per_batch"] else " (frame by frame: over the memory cap)"
            lines.append(f"| {row['size'].replace('x', '×')} | {row['device']} | {row['precision']} | {batch}{calls} | "
                         f"{m['frames']} | {m['frames_per_s']:.2f} | {m['ms_per_frame']:.0f} | {m['peak_rss_mb']:.0f} |")
    clip = video.get("end_to_end")
    if clip and "error" in clip:
        lines.append(f"\nvideo end to end ERROR: {clip['error'][:500]}")
    elif clip:
        lines.append(f"\nvideo end to end (decode + stylize + H.264 encode, {clip['size'].replace('x', '×')}, "
                     f"{clip['frames']} frames, batch {clip['batch']}): {clip['frames_per_s']:.2f} frames/s; "
                     f"decode alone {clip['decode_frames_per_s']:.0f} frames/s, encode alone "
                     f"{clip['encode_frames_per_s']:.0f} frames/s; peak RSS {clip['peak_rss_mb']:.0f} MB")
    return lines


def served_variant(results: dict[str, Any]) -> str:
    """The infer variant the TorchServe workers ran: the .pt2 at the precision they resolved."""
    return SHIPPED_BF16 if (results.get("serving") or {}).get("precision") == "bf16" else SHIPPED


def _model_only(results: dict[str, Any]) -> float | None:
    """The served file's model-only images/s (512², batch 1): the mean of the runs just before and after the
    serving load where there are (a dict in older result files), else the inference section's row."""
    near = results.get("serving_model_only")
    near = [near] if isinstance(near, dict) else near or []
    rates = [r["batches"]["1"]["images_per_s"] for r in near if r.get("batches")]
    if rates:
        return sum(rates) / len(rates)
    m = _infer_index(results).get((_target_kind(results), served_variant(results), "512", "1"))
    return m["images_per_s"] if m else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue as {target, value, met}; only those this run measured."""
    out = []
    idx, kind = _infer_index(results), _target_kind(results)
    for variant, limits in ((SHIPPED, TARGET_TIME), (SHIPPED_BF16, BF16_TARGET_TIME)):
        for size, limit in limits.items():
            ours, ref = idx.get((kind, variant, size, "1")), _reference(idx, kind, size, "1")
            if ours and ref:
                ratio = ours["median_s"] / ref["median_s"]
                out.append({"target": f"inference {size} batch 1: {variant} ({kind} model) time ≤ {limit} × reference",
                            "value": round(ratio, 3), "met": ratio <= limit})
    diffs = results.get("same_output_max_abs_diff", {})
    fp32 = {k: v for k, v in diffs.items() if "-bf16@" not in k}
    if fp32:
        worst = max(fp32.values())
        out.append({"target": f"outputs equal the reference (max abs diff ≤ {SAME_OUTPUT_TOL})", "value": worst,
                    "met": worst <= SAME_OUTPUT_TOL})
    if len(fp32) < len(diffs):
        levels = max(v for k, v in diffs.items() if "-bf16@" in k) * 255
        out.append({"target": f"bf16 outputs within {BF16_MAX_LEVELS} levels of the fp32 reference (8 bit)",
                    "value": round(levels, 2), "met": levels <= BF16_MAX_LEVELS})
    big = (results.get("serving") or {}).get("request_1080p")
    if big and big.get("status") == 200:  # the real thing: the TorchServe worker serving a 1080p JPEG
        peak = max(v for v in big["worker_peak_rss_mb"].values() if v is not None)
        out.append({"target": "peak RSS of the TorchServe worker serving a 1080p request < 3 GB (MB)",
                    "value": round(peak), "met": peak < 3 * 1024})
    m = idx.get((kind, SHIPPED, "1080p", "1"))
    if m:
        out.append({"target": "peak RSS of a 1080p model call in a bare process < 3 GB (MB)", "value": round(m["peak_rss_mb"]),
                    "met": m["peak_rss_mb"] < 3 * 1024})
    tidx = _train_index(results)
    ours, ref = tidx.get((kind, "ours", 256)), tidx.get((PLAIN, "reference", 256))
    if ours and ref:
        ratio = ours["images_per_s"] / ref["images_per_s"]
        out.append({"target": f"training 256² batch 4 ({kind} model): ≥ 1.25 × reference images/s", "value": round(ratio, 3),
                    "met": ratio >= 1.25})
    for size in (128, 256):
        bf16, ours, ref = (tidx.get((kind, "ours-bf16", size)), tidx.get((PLAIN, "ours", size)),
                           tidx.get((PLAIN, "reference", size)))
        if bf16 and ref:
            ratio = bf16["images_per_s"] / ref["images_per_s"]
            out.append({"target": f"training {size}² batch {bf16['batch']} ({kind} model, bf16-mixed): "
                                  f"≥ {BF16_TRAIN_SPEEDUP} × reference images/s", "value": round(ratio, 3),
                        "met": ratio >= BF16_TRAIN_SPEEDUP})
        if ours and ref:
            rel = _loss_rel_diff(ours["losses"][0], ref["losses"][0])
            out.append({"target": f"training {size}²: same loss values (first step, rel. ≤ {SAME_LOSS_RTOL})",
                        "value": rel, "met": rel <= SAME_LOSS_RTOL})
    serving, model_only = results.get("serving") or {}, _model_only(results)
    for r in serving.get("rows", []):
        if r["model"] == "plain" and r["concurrency"] == 4 and model_only:
            frac = r["requests_per_s"] / model_only
            out.append({"target": f"serving at concurrency 4 ≥ {SERVE_SHARE:.0%} of model-only throughput, zero errors",
                        "value": round(frac, 3), "met": frac >= SERVE_SHARE and r["errors"] == 0})
    return out


def print_report(results: dict[str, Any]) -> None:
    info = results["machine"]
    print(f"\nmachine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['memory_gb']} GB, "
          f"GPU: {info['gpu'] or 'none'}, torch {info['torch']} ({info['torch_threads']} threads)")
    print(table(results))
    if results.get("targets"):
        print("\ntargets:")
        for t in results["targets"]:
            print(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']}")
