"""The inference precision of a served model: auto (default) | fp32 | bf16 | fp16.

`bf16` / `fp16` run the **convolutions** in that precision and everything else in fp32: each
convolution with `LOW_PRECISION_MIN_CHANNELS` input channels or more has its input, weight and bias
rounded to the low precision, the convolution accumulates in
fp32 inside oneDNN / cuDNN, and its output is returned as fp32. Instance-norm statistics, the residual
sums, the strength path and the output activation stay fp32, so the rounding of one layer is never
carried into the next in low precision (`torch.autocast` keeps activations in bf16 between layers:
10-11 levels of difference to fp32 on photos, against 1-3 with this rule on trained models; the
figures are in docs/serving.md, Precision). The convolutions are
where the time goes and where native bf16 units (AVX512-BF16, AMX) pay; the exported graphs stay as
captured (float32 weights, device-agnostic, dynamic H/W). It is done at run time by a torch-function
mode (`LowPrecisionConvolutions`), so the same rule holds for the `.pt2` graphs, the eager generator
of a `.ckpt` and the eager twin that tiled inference runs (whose whole-image statistics stay float64
sums in every precision), and torch.compile traces it. TorchScript (`.pt`) runs outside Python's
reach: it is fp32 only.

`auto` is bf16 on a CPU with native bf16 units (`native_bf16`) and fp32 elsewhere (GPUs, older
CPUs, ONNX Runtime and TorchScript models): what was chosen is logged by the handler and shown by
`describe`. `$INSTYLE_PRECISION` (an operator's choice for the whole process) replaces `auto` wherever
it is resolved: the handler, `stylize` and `run_batch`.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, ContextManager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pipeline.common.cpu import native_bf16

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = ("auto", *PRECISIONS)
DEFAULT_PRECISION = "auto"
ENV_PRECISION = "INSTYLE_PRECISION"
# how a convolution is called: by the eager layers (F.conv2d), and in a torch.export graph
_CONVOLUTIONS = {F.conv2d, torch.conv2d, torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default}
# Convolutions with fewer input channels stay fp32: in the residual generators the first two (the photo's 3
# channels, then `width`), which are also where rounding hurts most. The photo in bf16 is rounded by up to half
# an 8-bit level, and the instance norm after the first convolution amplifies that: on a trained plain model, bf16
# in the first convolution alone gave up to 5 levels of difference to fp32, every other convolution alone ≤ 1,
# and fp32 in the first two brought the whole network from 5 levels to 2 (docs/serving.md, Precision). Few
# input channels is also where bf16 buys least: at 512², 3→32 9×9 takes 15 ms in fp32 against 9 ms in bf16 with
# the rounding passes, and 32→64 3×3/2 11 ms against 16 ms.
LOW_PRECISION_MIN_CHANNELS = 64


def fp32_only(model: Any) -> str | None:
    """Why `model` runs in fp32 only (None: it takes every precision)."""
    if type(model).__name__ == "OnnxGenerator":
        return "ONNX Runtime runs .onnx in fp32"
    if isinstance(model, torch.jit.ScriptModule):
        return "TorchScript (.pt) runs in fp32"
    return None


def check_precision(precision: str, model: Any = None) -> str:
    """`precision` if known (and supported by `model`'s form), else a clear ValueError."""
    if precision not in CHOICES:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {', '.join(CHOICES)}")
    reason = fp32_only(model)
    if precision not in ("fp32", "auto") and reason:
        raise ValueError(f"precision={precision} needs a .pt2 or .ckpt model: {reason}")
    return precision


def resolve_precision(precision: str, device: torch.device | str = "cpu", model: Any = None) -> str:
    """The precision `precision` means on `device` for `model`: `auto` → $INSTYLE_PRECISION if set, else
    bf16 on a native-bf16 CPU (fp32 for ONNX Runtime and TorchScript models and everywhere else); the
    others as given (checked)."""
    if check_precision(precision, model) != "auto":
        return precision
    chosen = os.environ.get(ENV_PRECISION, "auto") or "auto"
    if check_precision(chosen, model) != "auto":
        return chosen
    return "bf16" if native_bf16(device) and fp32_only(model) is None else "fp32"


def _centrable(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a convolution call pads nothing itself (its input was padded by a reflection or replicate
    pad op, as every layer of the generators' inference form is), is not transposed and not grouped:
    then a constant input channel gives a constant output, sum(W)·c."""
    full = func is torch.ops.aten.convolution.default  # (x, w, b, stride, padding, dilation, transposed, _, groups)
    padding = args[4] if len(args) > 4 else kwargs.get("padding", 0)
    transposed = bool(args[6] if len(args) > 6 else kwargs.get("transposed", False)) if full else False
    groups = args[8 if full else 6] if len(args) > (8 if full else 6) else kwargs.get("groups", 1)
    flat = padding if isinstance(padding, (list, tuple)) else [padding]
    return not transposed and groups == 1 and not isinstance(padding, str) and not any(flat)


class LowPrecisionConvolutions(TorchFunctionMode):
    """Every fp32 convolution with `LOW_PRECISION_MIN_CHANNELS` input channels or more run in `dtype`
    (fp32 accumulation), its output returned as fp32.

    An unpadded convolution runs on its input minus the input's per-channel mean, and the mean's part,
    sum(W)·mean + bias, is added back in fp32: the same function (a constant channel stays constant
    through the explicit pads), but the low-precision output no longer carries the DC offset the
    instance norm after it subtracts. Rounded with it, the offset's rounding error (2⁻⁹ of the offset in
    bf16) is what the norm would amplify: on a trained plain model this halves the max difference to
    fp32 and cuts the pixels more than 2 levels off ~14× (docs/serving.md, Precision)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if (func not in _CONVOLUTIONS or args[0].dtype != torch.float32
                or args[0].shape[1] < LOW_PRECISION_MIN_CHANNELS):
            return func(*args, **kwargs)
        x, weight = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.pop("bias", None)
        if not _centrable(func, args, kwargs):
            low = x.to(self.dtype), weight.to(self.dtype), None if bias is None else bias.to(self.dtype)
            return func(*low, *args[3:], **kwargs).float()
        mean = x.mean(dim=(2, 3), keepdim=True)
        # two passes, each vectorized (a subtraction straight into bf16 is a mixed-dtype slow path, ~10x slower)
        centred = (x - mean).to(self.dtype)
        y = func(centred, weight.to(self.dtype), None, *args[3:], **kwargs).float()
        dc = mean.flatten(1) @ weight.sum(dim=(2, 3)).t()  # (B, C_out): the convolution of the constant mean
        dc = dc if bias is None else dc + bias
        return y.add_(dc[:, :, None, None])


def precision_mode(device: torch.device | str = "cpu", precision: str = DEFAULT_PRECISION,
                   model: Any = None) -> ContextManager[Any]:
    """The context a model call runs in: nothing for fp32, low-precision convolutions otherwise
    (`precision` resolved for `device` and `model` first)."""
    resolved = resolve_precision(precision, device, model)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return LowPrecisionConvolutions(PRECISIONS[resolved])
