"""Tiled inference of very large images with bounded memory and whole-image instance-norm statistics.

`run_batch` (pipeline.serve.inference) calls `stylize_tiled` for an image whose activations would exceed
the memory cap ($INSTYLE_MAX_MEMORY_MB, the archive's `handler.max_memory_mb`, the CLI's
--max_memory_mb; pipeline.serve.limits). Imports only torch.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


# How it works.
#
# Instance norm needs each layer's mean and variance over the *whole* image, so tiles cannot
# simply be run through the network one by one (each would get its own statistics: seams and
# colour shifts). `stylize_tiled` runs the residual generator layer group by layer group:
#   head   (full → ¼ resolution): three passes over overlapping tiles; pass k recomputes the
#          cheap first layers and accumulates the whole-image sums of layer k (float64), the
#          third writes the ¼-resolution 128-channel result into one buffer;
#   middle (the residual blocks, ¼ resolution, 1/16 of the pixels): whole-tensor statistics,
#          convolutions tile by tile into two preallocated buffers, norms in place;
#   tail   (¼ → full resolution): three passes again (two gather statistics, one writes the
#          output tile by tile).
# Reflection padding is applied where a tile touches the image border and real neighbouring
# pixels are used elsewhere, so every layer sees exactly what it sees untiled: the result equals
# the untiled model's up to float rounding (tests/test_tiling.py), for ~1.5× the compute.

IN_EPS = 1e-5  # nn.InstanceNorm2d's default, what the generator uses
UNTILED_BYTES_PER_PIXEL = 800  # peak activation bytes per input pixel of one untiled call (measured)
TILE_SCRATCH_BYTES_PER_PIXEL = 1200  # per pixel of one output tile, halo and all intermediates included


def untiled_bytes(h: int, w: int, batch: int = 1) -> int:
    return UNTILED_BYTES_PER_PIXEL * h * w * batch


def tile_for_cap(cap: int) -> int:
    """Output tile side (multiple of 64) whose scratch memory fits in a quarter of the cap."""
    side = int(math.sqrt(cap / 4 / TILE_SCRATCH_BYTES_PER_PIXEL)) // 64 * 64
    return max(128, min(1024, side))


def generator_weights(model: Any) -> dict[str, torch.Tensor] | None:
    """The state dict of a residual generator with instance norm, reflection padding and nearest
    upsampling (what `stylize_tiled` implements), or None for anything else.

    `.pt` / `.pt2` files loaded by `load_model` carry it as `model.instyle_weights`; an eager
    generator (from a `.ckpt`) gives its own state dict."""
    weights = getattr(model, "instyle_weights", None)
    if weights is None and isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        weights = dict(model.state_dict())
    if not weights:
        return None
    needed = ("down.0.0.1.weight", "down.0.1.weight", "res.0.body.0.1.weight", "up.0.1.0.1.weight", "out.1.weight")
    if not all(k in weights for k in needed) or any("running_" in k for k in weights):
        return None  # zero padding, transposed convs, batch norm, no norm or another architecture
    return weights


class _Piece:
    """Rows [r0, r1) × columns [c0, c1) of one layer's activation of full size H × W (B=1)."""

    __slots__ = ("t", "r0", "r1", "c0", "c1", "H", "W")

    def __init__(self, t: torch.Tensor, r0: int, r1: int, c0: int, c1: int, H: int, W: int):
        self.t, self.r0, self.r1, self.c0, self.c1, self.H, self.W = t, r0, r1, c0, c1, H, W

    def crop(self, r0: int, r1: int, c0: int, c1: int) -> "_Piece":
        if not (self.r0 <= r0 <= r1 <= self.r1 and self.c0 <= c0 <= c1 <= self.c1):
            raise AssertionError(f"tile {r0}:{r1},{c0}:{c1} not inside {self.r0}:{self.r1},{self.c0}:{self.c1}")
        t = self.t[:, :, r0 - self.r0:r1 - self.r0, c0 - self.c0:c1 - self.c0]
        return _Piece(t, r0, r1, c0, c1, self.H, self.W)


def _conv_span(a0: int, a1: int, full: int, pad: int, stride: int, lo: int, hi: int) -> tuple[int, int, int, int, int]:
    """Along one axis: input rows [a0, a1) of a layer of size `full`, padded by reflection by (lo, hi)
    at the image border → (first, end) output rows computable, and the slice of the padded rows."""
    b0, b1 = a0 - lo, a1 + hi  # coordinates covered, reflected rows included
    out_full = (full - 1) // stride + 1
    i0 = max(0, -((-(b0 + pad)) // stride))
    i1 = min(out_full, (b1 - 1 - pad) // stride + 1)
    return i0, i1, stride * i0 - pad - b0, stride * (i1 - 1) + pad - b0 + 1, out_full


def _conv(p: _Piece, w: dict[str, torch.Tensor], name: str, stride: int = 1) -> _Piece:
    weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
    pad = weight.shape[-1] // 2
    top, bottom = (pad if p.r0 == 0 else 0), (pad if p.r1 == p.H else 0)
    left, right = (pad if p.c0 == 0 else 0), (pad if p.c1 == p.W else 0)
    t = F.pad(p.t, (left, right, top, bottom), mode="reflect") if top or bottom or left or right else p.t
    r0, r1, rs, re, H = _conv_span(p.r0, p.r1, p.H, pad, stride, top, bottom)
    c0, c1, cs, ce, W = _conv_span(p.c0, p.c1, p.W, pad, stride, left, right)
    return _Piece(F.conv2d(t[:, :, rs:re, cs:ce], weight, bias, stride), r0, r1, c0, c1, H, W)


def _up(p: _Piece) -> _Piece:
    t = F.interpolate(p.t, scale_factor=2.0, mode="nearest")
    return _Piece(t, 2 * p.r0, 2 * p.r1, 2 * p.c0, 2 * p.c1, 2 * p.H, 2 * p.W)


class _Stats:
    """Per-channel sum and sum of squares in float64 over the owned part of every tile."""

    def __init__(self) -> None:
        self.s: torch.Tensor | float = 0.0
        self.ss: torch.Tensor | float = 0.0
        self.n = 0

    def add(self, t: torch.Tensor) -> None:
        self.s = self.s + t.sum(dim=(0, 2, 3), dtype=torch.float64)
        self.ss = self.ss + (t * t).sum(dim=(0, 2, 3), dtype=torch.float64)
        self.n += t.shape[2] * t.shape[3]

    def affine(self, w: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s / self.n
        var = (self.ss / self.n - mean * mean).clamp_min(0)
        return _fold(mean, var, w, name)


def _fold(mean: torch.Tensor, var: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance norm with known statistics as y = x·scale + shift (per channel, shaped 1×C×1×1)."""
    scale = w[f"{name}.weight"].double() / torch.sqrt(var.double() + IN_EPS)
    shift = w[f"{name}.bias"].double() - mean.double() * scale
    dtype = w[f"{name}.weight"].dtype
    return scale.to(dtype).view(1, -1, 1, 1), shift.to(dtype).view(1, -1, 1, 1)


def _norm(p: _Piece, affine: tuple[torch.Tensor, torch.Tensor], relu: bool = True) -> _Piece:
    t = torch.addcmul(affine[1], p.t, affine[0])
    return _Piece(t.relu_() if relu else t, p.r0, p.r1, p.c0, p.c1, p.H, p.W)


def _norm_whole_(t: torch.Tensor, w: dict[str, torch.Tensor], name: str, relu: bool) -> None:
    var, mean = torch.var_mean(t, dim=(0, 2, 3), unbiased=False)
    scale, shift = _fold(mean, var, w, name)
    t.mul_(scale).add_(shift)
    if relu:
        t.relu_()


def _splits(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) cut into near-equal parts of at most `size` (no sliver at the end)."""
    parts = max(1, -(-n // max(1, size)))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _grid(h: int, w: int, size: int) -> list[tuple[int, int, int, int]]:
    return [(r0, r1, c0, c1) for r0, r1 in _splits(h, size) for c0, c1 in _splits(w, size)]


STRENGTH_NET = "strength_net.linear"


def resolve_conditioning(weights: dict[str, torch.Tensor], style: torch.Tensor,
                         strength: float = 1.0) -> dict[str, torch.Tensor]:
    """A conditional generator's state dict (pipeline.model.conditional) → the plain generator's, for
    one style-weight vector `style` (N,) and `strength`: each norm's (N, C) γ/β table becomes the (C,)
    vector wᵀΓ (+ hᵀG with the strength features h), which is all `stylize_tiled` needs.
    A plain state dict comes back unchanged."""
    norms = [k[:-len(".weight")] for k, v in weights.items()
             if k.endswith(".weight") and v.dim() == 2 and not k.startswith(STRENGTH_NET)]
    if not norms:
        return weights
    w = style.to(weights[norms[0] + ".weight"].dtype).reshape(1, -1)
    hidden = None
    if f"{STRENGTH_NET}.weight" in weights:
        s = torch.full((1, 1), float(strength), dtype=w.dtype)
        hidden = torch.relu(F.linear(torch.cat([w, s], dim=1), weights[f"{STRENGTH_NET}.weight"],
                                     weights[f"{STRENGTH_NET}.bias"]))
    plain = {k: v for k, v in weights.items() if not k.startswith(STRENGTH_NET) and ".strength_" not in k}
    for name in norms:
        gamma, beta = w @ weights[f"{name}.weight"], w @ weights[f"{name}.bias"]
        if hidden is not None:
            gamma = gamma + hidden @ weights[f"{name}.strength_gamma"]
            beta = beta + hidden @ weights[f"{name}.strength_beta"]
        plain[f"{name}.weight"], plain[f"{name}.bias"] = gamma[0], beta[0]
    return plain


def generator_output(model: Any) -> str:
    """The output activation of a loaded model: `sigmoid` (ours) or `clamp` (imported linear-output models)."""
    output = getattr(model, "instyle_output", None)
    if output is None:
        output = "clamp" if getattr(model, "clamp_output", False) else "sigmoid"
    return output


def stylize_tiled(weights: dict[str, torch.Tensor], x: torch.Tensor, tile: int = 512, output: str = "sigmoid") -> torch.Tensor:
    """The residual generator (instance norm, reflection padding, nearest upsampling) on (B, 3, H, W)
    in [0, 1], in tiles of about `tile`² output pixels with whole-image instance-norm statistics;
    `output` is its final activation (`sigmoid`, or `clamp` to [0, 1])."""
    if output not in ("sigmoid", "clamp"):
        raise ValueError(f"output={output!r}: choose sigmoid or clamp")
    with torch.inference_mode():
        return torch.cat([_tiled_one(weights, x[i:i + 1], tile, output) for i in range(x.shape[0])])


def _tiled_one(w: dict[str, torch.Tensor], x: torch.Tensor, tile: int, output: str) -> torch.Tensor:
    h, wd = x.shape[-2:]
    H, W = max(-(-h // 4), 4) * 4, max(-(-wd // 4), 4) * 4  # as generators.pad_to_multiple(x, 4, 16)
    xp = F.pad(x, (0, W - wd, 0, H - h), mode="replicate")
    Hq, Wq, tq = H // 4, W // 4, max(4, tile // 4)
    n_res = len({k.split(".")[1] for k in w if k.startswith("res.")})
    tiles = _grid(Hq, Wq, tq)  # in ¼-resolution units; full resolution ×4, half ×2

    def head(q0: int, q1: int, p0: int, p1: int, depth: int, affines: list) -> torch.Tensor:
        r0, r1, c0, c1 = max(0, 4 * q0 - 8), min(H, 4 * q1 + 8), max(0, 4 * p0 - 8), min(W, 4 * p1 + 8)
        p = _conv(_Piece(xp[:, :, r0:r1, c0:c1], r0, r1, c0, c1, H, W), w, "down.0.0.1")
        for level in range(1, depth):
            p = _conv(_norm(p, affines[level - 1]), w, f"down.{level}.0.1", stride=2)
        k = 4 >> (depth - 1)  # 4, 2, 1: the scale of this layer's rows relative to ¼ resolution
        return p.crop(k * q0, k * q1, k * p0, k * p1).t

    affines: list = []
    for depth in (1, 2):
        stats = _Stats()
        for q in tiles:
            stats.add(head(*q, depth, affines))
        affines.append(stats.affine(w, f"down.{depth - 1}.1"))
    y = torch.empty(1, w["down.2.0.1.weight"].shape[0], Hq, Wq, dtype=x.dtype, device=x.device)
    for q0, q1, p0, p1 in tiles:
        y[:, :, q0:q1, p0:p1] = head(q0, q1, p0, p1, 3, affines)
    _norm_whole_(y, w, "down.2.1", relu=True)

    a, b = torch.empty_like(y), torch.empty_like(y)
    mid_tiles = _grid(Hq, Wq, 2 * tq)
    for j in range(n_res):
        for src, dst, conv, norm, relu in ((y, a, f"res.{j}.body.0.1", f"res.{j}.body.1", True),
                                          (a, b, f"res.{j}.body.3.1", f"res.{j}.body.4", False)):
            for q0, q1, p0, p1 in mid_tiles:
                r0, r1, c0, c1 = max(0, q0 - 1), min(Hq, q1 + 1), max(0, p0 - 1), min(Wq, p1 + 1)
                piece = _conv(_Piece(src[:, :, r0:r1, c0:c1], r0, r1, c0, c1, Hq, Wq), w, conv)
                dst[:, :, q0:q1, p0:p1] = piece.crop(q0, q1, p0, p1).t
            _norm_whole_(dst, w, norm, relu)
        y.add_(b)
    del a, b

    def tail(q0: int, q1: int, p0: int, p1: int, depth: int, affines: list) -> torch.Tensor:
        r0, r1, c0, c1 = max(0, q0 - 3), min(Hq, q1 + 3), max(0, p0 - 3), min(Wq, p1 + 3)
        p = _conv(_up(_Piece(y[:, :, r0:r1, c0:c1], r0, r1, c0, c1, Hq, Wq)), w, "up.0.1.0.1")
        if depth >= 2:
            p = _conv(_up(_norm(p, affines[0])), w, "up.1.1.0.1")
        if depth >= 3:
            p = _conv(_norm(p, affines[1]), w, "out.1")
        k = 2 if depth == 1 else 4
        return p.crop(k * q0, k * q1, k * p0, k * p1).t

    affines = []
    for depth in (1, 2):
        stats = _Stats()
        for q in tiles:
            stats.add(tail(*q, depth, affines))
        affines.append(stats.affine(w, f"up.{depth - 1}.1.1"))
    out = torch.empty(1, 3, H, W, dtype=x.dtype, device=x.device)
    for q0, q1, p0, p1 in tiles:
        y_tile = tail(q0, q1, p0, p1, 3, affines)
        out[:, :, 4 * q0:4 * q1, 4 * p0:4 * p1] = y_tile.clamp(0, 1) if output == "clamp" else torch.sigmoid(y_tile)
    return out[:, :, :h, :wd]
