"""The serving half of `benchmarks.gpu_check`: every served form (.pt, .pt2) on the device through the real
handler, the `.onnx` through ONNX Runtime (same loader; TorchServe never serves it), and frames/s of the eager generator per precision, with and without torch.compile.

Device-synchronized timing: on CUDA each call is timed by CUDA events (the GPU's own clock, waited
for), so an asynchronous launch is never mistaken for finished work; on the CPU by the wall clock.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.common import photo, photo_jpeg
from pipeline.serve.precision import PRECISIONS, precision_mode
FORMS = ("pt", "pt2", "onnx")
# 8-bit levels a form's reply may differ from the served .pt2's: TF32 convolutions, ONNX Runtime on the
# CPU and tiles differ by ~1e-3 (docs/benchmarks.md, GPU), under one level; more is a form computing wrong
MAX_FORM_DIFF = 4


def at_precision(model: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model` called at `precision` the way the server runs it (`pipeline.serve.precision.precision_mode`:
    the convolutions in bf16 / fp16, the rest in fp32; a torch-function mode, which torch.compile traces)."""
    def call(x: torch.Tensor) -> torch.Tensor:
        with precision_mode(device, precision):
            return model(x)

    return call


def unsupported(device: torch.device, precision: str) -> str | None:
    """Why `precision` cannot run on `device` (None: it can): a one-layer probe in that precision, which
    raises where the device has no such kernels."""
    conv = torch.nn.Conv2d(3, 4, 3).to(device, PRECISIONS[precision])
    with torch.inference_mode():
        try:
            conv(torch.rand(1, 3, 8, 8, device=device, dtype=PRECISIONS[precision]))
        except RuntimeError as e:
            return f"{type(e).__name__}: {str(e)[:200]}"
    return None


def time_calls(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls, measured on the device's clock when it is a GPU."""
    times = []
    cuda = x.device.type == "cuda"
    with torch.inference_mode():
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t0)
    return times


def frame_rates(ckpt: Path, device: torch.device, size: tuple[int, int], warmup: int, repeats: int,
                compile_backend: str) -> list[dict[str, Any]]:
    """Frames/s of the eager generator (the serving loader's `.ckpt` form) at batch 1 on `size` (H, W)
    frames, for every precision, eager and torch.compile'd; a precision the device lacks is a row with
    its reason."""
    from pipeline.serve.model_io import load_model

    generator, _ = load_model(ckpt, device)
    x = photo(1, *size).to(device)
    rows = []
    for precision in PRECISIONS:
        reason = unsupported(device, precision)
        for compiled in (False, True):
            row: dict[str, Any] = {"precision": precision, "compile": compile_backend if compiled else None}
            if reason:
                rows.append({**row, "skipped": reason})
                continue
            model = generator
            if compiled:
                torch._dynamo.reset()  # each compiled row pays its own compile, not a cached one
                model = torch.compile(generator, backend=compile_backend, dynamic=False)
            fn = at_precision(model, device, precision)
            first = time_calls(fn, x, 1)[0]  # the compile, for a compiled model
            time_calls(fn, x, max(warmup - 1, 0))
            times = time_calls(fn, x, repeats)
            with torch.inference_mode():
                finite = bool(torch.isfinite(fn(x)).all())  # a precision that overflows is fast and useless
            median = statistics.median(times)
            rows.append({**row, "first_call_s": first, "median_s": median, "min_s": min(times),
                         "frames_per_s": 1 / median, "repeats": repeats, "finite_output": finite})
    return rows


def serve_forms(export_dir: Path, device: torch.device, images: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """Each served form loaded by the real handler on `device` (TorchServe's gpu_id in the context's
    system properties) and one batch of `images` (name → (H, W)) served through it, as TorchServe's
    worker feeds a handler; the `.onnx` through `python -m pipeline stylize`'s path (ONNX Runtime on
    `device`'s provider where it has one). PNG replies, compared pixel for pixel with the served `.pt2`'s."""
    from pipeline.serve.model_io import load_model
    from pipeline.tools.stylize import stylize_bytes
    from tests.serving_helpers import decode_pil, load_handler, run_handler, ts_request

    bodies = {name: photo_jpeg(h, w, seed=i) for i, (name, (h, w)) in enumerate(images.items())}
    gpu = (device.index or 0) if device.type == "cuda" else None
    rows, outputs = [], {}
    for form in FORMS:
        row: dict[str, Any] = {"form": form}
        try:
            t0 = time.perf_counter()
            if form == "onnx":
                model, _ = load_model(export_dir / "generator.onnx", device)
                row["load_s"] = time.perf_counter() - t0
                row["device"] = f"{device} (onnxruntime {model.session.get_providers()[0]}, offline path)"
                t0 = time.perf_counter()
                results = [(200, *stylize_bytes(model, body, {}, device=device)[::-1]) for body in bodies.values()]
            else:
                handler, context = load_handler(export_dir, f"generator.{form}", gpu=gpu)
                row["load_s"] = time.perf_counter() - t0
                row["device"] = str(handler.device)
                requests = [ts_request(body, content_type="image/jpeg", rid=name) for name, body in bodies.items()]
                _sync(device)
                t0 = time.perf_counter()
                results = run_handler(handler, context, requests)
            _sync(device)
            row["batch_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - one form failing must not hide the others' results
            rows.append({**row, "error": f"{type(e).__name__}: {e}"[:2000]})
            continue
        row["images"] = {}
        for (name, (h, w)), (status, ctype, body) in zip(images.items(), results):
            entry: dict[str, Any] = {"status": status, "size": [h, w]}
            if status == 200:
                out = np.asarray(decode_pil(body).convert("RGB"))
                entry["same_size"] = out.shape[:2] == (h, w)
                outputs[(form, name)] = out
            else:
                entry["error"] = body[:500].decode("utf-8", "replace")
            row["images"][name] = entry
        rows.append(row)
    for row in rows:  # 8-bit levels off the served form's pixels
        for name, entry in row.get("images", {}).items():
            a, b = outputs.get((row["form"], name)), outputs.get(("pt2", name))
            if a is not None and b is not None:
                entry["max_diff_vs_pt2"] = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serving_failures(rows: list[dict[str, Any]]) -> list[str]:
    """What went wrong in `serve_forms`' rows: errors, non-200 replies, replies of another size."""
    bad = [f"{r['form']}: {r['error']}" for r in rows if "error" in r]
    for r in rows:
        for name, e in r.get("images", {}).items():
            if e["status"] != 200 or not e.get("same_size"):
                bad.append(f"{r['form']} {name}: HTTP {e['status']} {e.get('error', 'reply of another size')}")
            elif e.get("max_diff_vs_pt2", 0) > MAX_FORM_DIFF:
                bad.append(f"{r['form']} {name}: {e['max_diff_vs_pt2']} 8-bit levels off the .pt2's reply")
    return bad

