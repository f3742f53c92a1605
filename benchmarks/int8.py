"""int8 inference, tried: ONNX Runtime's static QDQ quantization of a run's `.onnx` against fp32 and bf16.

    python -m benchmarks.int8 --run runs/NAME [--photos DIR] [--limit 20] [--calibration 32]
        [--convs all|residual] [--size 512] [--threads 2] [--out FILE]

The convolutions are quantized (weights int8 per channel, activations uint8, calibrated by min/max on
`--calibration` photos that are not among the `--limit` measured ones; `residual` leaves the first
three and last three convolutions, the full-resolution ones, in fp32). Prints the int8 output's
difference to ONNX Runtime's fp32 output (8-bit levels, max and mean; PSNR, worst photo and mean)
and the time of one 512² call (median of 8) for ONNX Runtime fp32 and int8 and for the run's `.pt2`
in fp32 and bf16 (the serving path's precisions), all with the first style at full strength where the
model has styles and the strength control. docs/benchmarks.md (int8) comes from this command.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.common.image_codec import IMAGE_SUFFIXES
from pipeline.common.memory import reuse_freed_memory
from pipeline.serve.controls import call_model, conditioning
from pipeline.serve.model_io import load_model
from pipeline.serve.precision import precision_mode

OUTER_CONVS = 3  # `residual`: convolutions left in fp32 at each end (stem and down-sampling, up-sampling and output)


def photo(path: Path, short: int = 256, crop: int | None = None) -> np.ndarray:
    """(1, 3, H, W) float32 in [0, 1], short side `short`, sides a multiple of 4; `crop`: top-left square."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = short / min(image.size)
    image = image.resize((round(image.width * scale) // 4 * 4, round(image.height * scale) // 4 * 4), Image.BICUBIC)
    x = (np.asarray(image, np.float32) / 255).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x if crop is None else x[:, :, :crop, :crop])


def feeds(inputs: list[Any], x: np.ndarray) -> dict[str, np.ndarray]:
    """A session's inputs for photo `x`: the first style at full strength where the model has them."""
    given = {"image": x, "strength": np.ones(1, np.float32)}
    if len(inputs) > 1:  # image, style (B, N)[, strength]
        given["style"] = np.eye(int(inputs[1].shape[1]), dtype=np.float32)[:1]
    return {i.name: given[i.name] for i in inputs}


def quantize(onnx_path: Path, out: Path, calibration: list[np.ndarray], convs: str) -> None:
    """Static QDQ int8 of the convolutions of `onnx_path`, written to `out`."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)  # conditioned graphs defeat it
    names = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    keep = names[:OUTER_CONVS] + names[-OUTER_CONVS:] if convs == "residual" else []
    inputs = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()
    feed = iter(calibration)

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(feed, None)
            return None if x is None else feeds(inputs, x)

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                    nodes_to_exclude=keep)


def median_ms(call: Callable[[], Any], repeats: int = 8) -> float:
    call()
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a run with export/generator.onnx and .pt2")
    p.add_argument("--photos", type=Path, default=Path("../shared/assets/content/val"))
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--calibration", type=int, default=32)
    p.add_argument("--convs", choices=("all", "residual"), default="all")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    reuse_freed_memory()
    torch.set_num_threads(args.threads)
    export = args.run / "export"
    files = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < args.limit + args.calibration:
        p.error(f"{args.photos} has {len(files)} photos; --limit + --calibration need {args.limit + args.calibration}")
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "generator.int8.onnx"
        quantize(export / "generator.onnx", int8_path, [photo(f, crop=256) for f in files[-args.calibration:]], args.convs)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in (("fp32", export / "generator.onnx"), ("int8", int8_path))}
        levels = {name: lambda x, s=s: np.round(np.clip(s.run(None, feeds(s.get_inputs(), x))[0], 0, 1) * 255)
                  for name, s in sessions.items()}
        diffs, psnrs = [], []
        for f in files[:args.limit]:
            x = photo(f)
            d = levels["int8"](x) - levels["fp32"](x)
            diffs.append(np.abs(d))
            psnrs.append(10 * math.log10(255 ** 2 / max(float((d ** 2).mean()), 1e-12)))
        net, _ = load_model(export / "generator.pt2")
        controls = getattr(net, "instyle_controls", None)
        condition = [conditioning({}, controls)] if controls is not None else None  # the first style, full strength
        x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
        xt = torch.from_numpy(x)

        def pt2(precision: str) -> Callable[[], Any]:
            def call() -> None:
                with torch.inference_mode(), precision_mode("cpu", precision):
                    call_model(net, xt, condition, controls)
            return call

        ms = {f"onnx-{name}": median_ms(lambda s=s: s.run(None, feeds(s.get_inputs(), x))) for name, s in sessions.items()}
        ms.update({f"pt2-{precision}": median_ms(pt2(precision)) for precision in ("fp32", "bf16")})
    result = {"convs": args.convs, "photos": args.limit, "max_levels": float(max(d.max() for d in diffs)),
              "mean_levels": float(np.mean([d.mean() for d in diffs])), "psnr_min_db": min(psnrs),
              "psnr_mean_db": statistics.fmean(psnrs), "ms": {k: round(v, 1) for k, v in ms.items()},
              "size": args.size, "threads": args.threads}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
