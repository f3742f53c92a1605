"""The inference precision of a served model: fp32 (default) | bf16 | fp16.

Lower precisions run the model under `torch.autocast` for its device: the exported graphs stay as
captured (float32 weights, device- and server-independent) and the convolutions and matrix products
run in the lower precision, the rest as autocast's op lists decide. Tiled inference keeps its
whole-image statistics (float64 sums) in every precision. The pixel differences to fp32, measured on
photos, are in docs/serving.md (GPU serving). ONNX Runtime models run in fp32 only.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PRECISION = "fp32"
ENV_PRECISION = "INSTYLE_PRECISION"


def check_precision(precision: str, model: Any = None) -> str:
    """`precision` if known (and supported by `model`'s form), else a clear ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and type(model).__name__ == "OnnxGenerator":
        raise ValueError(f"precision={precision} needs a torch model (.pt2, .pt, .ckpt); ONNX Runtime runs .onnx in fp32")
    return precision


def autocast(device: torch.device | str, precision: str = DEFAULT_PRECISION) -> ContextManager[Any]:
    """The context a model call runs in: nothing for fp32, autocast to bf16 / fp16 otherwise."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision])
