"""What this machine's CPU offers for lower precision: native bf16 units or not.

Both the serving precision (`pipeline.serve.precision`, `auto`) and the cpu training preset
(`pipeline.train.cli`, `native_bf16`) choose bf16 only where it is native: oneDNN runs bf16
convolutions on AVX512-BF16 / AMX units at about twice the fp32 speed, and emulates them elsewhere
many times slower (docs/benchmarks.md, "bf16 training on the CPU").
"""
from __future__ import annotations

import torch


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` is a CPU whose oneDNN has native bf16 convolutions (AVX512-BF16 or AMX)."""
    return torch.device(device).type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
