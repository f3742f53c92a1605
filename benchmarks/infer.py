"""Inference worker: one model variant at one image size, batch 1 then batch 4, in its own process.

    python -m benchmarks.infer --variant torchscript --size 512 --run RUN [--repeats 5] [--save DIR]

Prints one JSON line: median/min latency per batch size, images/s, effective GFLOP/s, peak RSS
after each batch size (batch 1 is measured first, so its peak is not inflated by batch 4), and
writes the last batch-1 output (the fixed input) to DIR so the caller can compare it with the
reference's. Variants:

  reference    benchmarks.reference.ReferenceNet, eager NCHW fp32 under no_grad (the yardstick)
  eager        the project's ResidualGenerator from the checkpoint, in its inference form (load_model)
  torchscript  runs/NAME/export/generator.pt as the TorchServe handler and the CLI load it
  export       runs/NAME/export/generator.pt2 (torch.export program) as loaded by load_model
  compile      torch.compile (inductor) of the eager generator (compile time reported apart)
  X-bf16       variant X with bf16 convolutions (`pipeline.serve.precision`: what `auto` runs on a CPU with
               native bf16); e.g. export-bf16, the served .pt2 as a worker on such a CPU runs it
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import SIZES, current_rss_mb, generator_gflop, peak_rss_mb, photo

BASE_VARIANTS = ("reference", "eager", "torchscript", "export", "onnxruntime", "compile")
VARIANTS = BASE_VARIANTS + ("eager-bf16", "export-bf16", "compile-bf16")


def build(variant: str, run: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], Any]]:
    """(model, grad-mode context factory) of a variant, all with the run's weights. A conditioned model
    (the presets' strength control) is called as the server calls it for a request without options:
    its first style at full strength (`pipeline.serve.controls.call_model`)."""
    from pipeline.serve.controls import call_model
    from pipeline.serve.precision import LowPrecisionConvolutions
    from pipeline.serve.model_io import load_model

    if variant.endswith("-bf16"):
        model, grad_mode = build(variant.removesuffix("-bf16"), run)

        def bf16_mode() -> contextlib.ExitStack:
            stack = contextlib.ExitStack()
            stack.enter_context(grad_mode())
            stack.enter_context(LowPrecisionConvolutions(torch.bfloat16))
            return stack
        return model, bf16_mode
    ckpt = run / "checkpoints" / "last.ckpt"
    if variant == "reference":
        from benchmarks.reference import reference_for

        generator, _ = load_model(ckpt)
        return reference_for(generator).eval(), torch.no_grad
    if variant == "compile":  # the eager inference form, compiled (style and strength default inside)
        generator, _ = load_model(ckpt)
        return torch.compile(generator, dynamic=False), torch.no_grad
    files = {"eager": ckpt, "torchscript": run / "export" / "generator.pt", "export": run / "export" / "generator.pt2",
             # the exported .onnx in ONNX Runtime's CPU provider, as many threads as cores
             "onnxruntime": run / "export" / "generator.onnx"}
    if variant not in files:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    model, _ = load_model(files[variant])
    return (lambda x: call_model(model, x, None, model.instyle_controls)), torch.inference_mode


def time_calls(model: Callable, x: torch.Tensor, repeats: int, grad_mode: Callable[[], Any],
               keep_last: bool = False) -> tuple[list[float], torch.Tensor | None]:
    """Wall time of `repeats` calls; the last output is kept only if asked (it holds memory)."""
    times, last = [], None
    with grad_mode():
        for i in range(repeats):
            start = time.perf_counter()
            y = model(x)
            times.append(time.perf_counter() - start)
            last = y.detach().clone() if keep_last and i == repeats - 1 else None
            del y
    return times, last


def summarize(times: list[float], batch: int, h: int, w: int) -> dict[str, float]:
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "repeats": len(times), "images_per_s": batch / median,
            "gflops": generator_gflop(h, w) * batch / median}


def main(argv: list[str] | None = None) -> int:
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()  # this worker's entry point (a no-op with $INSTYLE_REUSE_FREED_MEMORY=0: the reference)
    p = argparse.ArgumentParser(prog="python -m benchmarks.infer")
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--size", choices=sorted(SIZES), required=True)
    p.add_argument("--run", type=Path, required=True, help="run folder made by benchmarks.common.make_run")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed calls at batch 1")
    p.add_argument("--repeats-batched", type=int, default=2, help="timed calls at the larger batch sizes")
    p.add_argument("--save", type=Path, default=None, help="folder for the batch-1 output (compared by bench.py)")
    args = p.parse_args(argv)
    h, w = SIZES[args.size]
    t0 = time.perf_counter()
    model, grad_mode = build(args.variant, args.run)
    result: dict[str, Any] = {"variant": args.variant, "size": args.size, "load_s": time.perf_counter() - t0,
                              "rss_loaded_mb": current_rss_mb(), "batches": {}}
    for i, batch in enumerate(int(b) for b in args.batches.split(",")):
        x = photo(batch, h, w)
        warm_start = time.perf_counter()
        warm, _ = time_calls(model, x, args.warmup if i == 0 else 0, grad_mode)
        if warm:
            result["first_call_s"] = warm[0]
            result["warmup_s"] = time.perf_counter() - warm_start
        keep = i == 0 and args.save is not None
        times, out = time_calls(model, x, args.repeats if i == 0 else args.repeats_batched, grad_mode, keep)
        result["batches"][str(batch)] = {**summarize(times, batch, h, w), "peak_rss_mb": peak_rss_mb()}
        if out is not None:  # the batch-1 output of the fixed input, for the same-math check
            args.save.mkdir(parents=True, exist_ok=True)
            torch.save(out[:1].contiguous(), args.save / f"{args.variant}-{args.size}.pt")
            del out
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
