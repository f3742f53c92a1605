"""Exact, cheaper formulations of the residual generator's two slowest layers, for inference.

Profiling the reference network on the 2-core CPU of docs/benchmarks.md showed the convolutions at
~80 % of the time, and two of them far below the others' speed:

- **nearest ×2 upsampling + reflection pad + 3×3 conv** (the two decoder stages). Every output
  pixel of phase (a, b) (row parity a, column parity b) sees only a 2×2 neighbourhood of the
  low-resolution input, with the 3×3 taps summed where they land on the same source pixel. So the
  stage equals one **2×2** convolution of the *low-resolution* input (replicate-padded by 1, which is
  what reflection padding of the upsampled image reads there) with 4·C_out outputs, phase (a, b)
  read at offset (a, b) of its result and the four phases interleaved. No upsampled tensor, no
  padding of it, a conv at ¼ of the pixels with 4/9 of the 3×3 conv's multiplications (it was one
  3×3 conv with 5 zero taps per phase and a `pixel_shuffle`: docs/benchmarks.md, "Where the time went").
- **the 9×9 conv to 3 channels** (the output layer). With 3 output channels oneDNN runs it at a
  fifth of its usual speed. Rewritten in space-to-depth form — `pixel_unshuffle(2)` of the padded
  input (128 channels), a 5×5 conv to 12 channels, `pixel_shuffle(2)` — it computes the same sums
  at twice the speed.

Both are the same arithmetic as the original layers (sums regrouped: results agree to float
rounding, ~1e-6, tests/test_fast_ops.py); the weights are re-arranged on the fly (microseconds;
TorchScript's freeze folds it into constants). Training keeps the plain layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

def _phase_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Along kernel axis `dim` (size 3), the 2 taps of each output phase of nearest-×2 + 3×3 conv on the
    low-resolution input padded by 1: phase 0 reads padded rows (i, i+1) with taps (w0, w1 + w2), phase 1
    rows (i+1, i+2) with (w0 + w1, w2). Returns a new leading axis of size 2 (the phase)."""
    t0, t1, t2 = w.select(dim, 0), w.select(dim, 1), w.select(dim, 2)
    return torch.stack([torch.stack([t0, t1 + t2], dim), torch.stack([t0 + t1, t2], dim)])


def upsample_conv_weights(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(C_out, C_in, 3, 3) → (4·C_out, C_in, 2, 2) phase kernels, phase-major (channel (2a + b)·C_out + c:
    each phase's outputs contiguous in channels-last memory, so the interleave copies whole pixels), and bias."""
    rows = _phase_taps(weight, 2)  # (2[a], C_out, C_in, 2, 3)
    both = _phase_taps(rows, 4)  # (2[b], 2[a], C_out, C_in, 2, 2)
    w = both.transpose(0, 1).reshape(weight.shape[0] * 4, weight.shape[1], 2, 2)
    return w.contiguous(memory_format=torch.channels_last), None if bias is None else bias.repeat(4)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """= conv2d(reflection_pad(upsample_nearest(x, 2), 1), weight, bias) for a 3×3 `weight`; channels-last."""
    w, b = upsample_conv_weights(weight, bias)
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, b)  # (B, 4·C_out, H + 1, W + 1): window starts
    c, h, wd = weight.shape[0], x.shape[-2], x.shape[-1]
    # phase (a, q) of output pixel (i, j) is its block's window at (i + a, j + q), taken as (B, H, W, C_out)
    rows = []
    for a in range(2):
        phases = [y[:, (2 * a + q) * c:(2 * a + q + 1) * c, a:a + h, q:q + wd].permute(0, 2, 3, 1) for q in range(2)]
        rows.append(torch.stack(phases, 3))  # (B, H, W, 2[q], C_out)
    # (B, H, 2[a], W, 2[q], C_out) is the memory of channels-last (B, C_out, 2H, 2W): stacking is the interleave
    return torch.stack(rows, 2).reshape(y.shape[0], 2 * h, 2 * wd, c).permute(0, 3, 1, 2)


def space_to_depth_weights(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(C_out, C_in, k, k) → (4·C_out, 4·C_in, K, K) with K = ⌈(k+1)/2⌉ for a stride-1 conv on the
    space-to-depth input of `space_to_depth_conv` (input channel (2u + v)·C_in + c holds pixels
    (2i + u, 2j + v) of channel c); output channel c·4 + 2p + q is output phase (p, q)."""
    c_out, c_in, k, _ = weight.shape
    big = (k + 2) // 2  # K = ⌈(k+1)/2⌉: the taps of every output phase fit in K×K input blocks
    phases = []
    for p in range(2):
        for q in range(2):
            # shift the kernel by the output phase, then split rows/cols into (block, phase-in-block)
            shifted = F.pad(weight, (q, 2 * big - k - q, p, 2 * big - k - p))
            phases.append(shifted.reshape(c_out, c_in, big, 2, big, 2).permute(0, 3, 5, 1, 2, 4))  # o u v c m n
    w = torch.stack(phases, 1).reshape(c_out * 4, c_in * 4, big, big)
    return w.contiguous(memory_format=torch.channels_last), None if bias is None else bias.repeat_interleave(4)


def space_to_depth_conv(x_padded: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """= conv2d(x_padded, weight, bias) (stride 1, no padding) for even-sized `x_padded` and odd k."""
    w, b = space_to_depth_weights(weight, bias)
    # The four pixel phases by strided slicing (not pixel_unshuffle, whose reshape makes torch.export
    # ask for a divisibility it cannot prove through the generator's padding arithmetic).
    blocks = torch.cat([x_padded[:, :, 0::2, 0::2], x_padded[:, :, 0::2, 1::2],
                        x_padded[:, :, 1::2, 0::2], x_padded[:, :, 1::2, 1::2]], 1)
    return F.pixel_shuffle(F.conv2d(blocks, w, b), 2)
