"""Tiled inference of very large images with bounded memory and whole-image instance-norm statistics.

`run_batch` (pipeline.serve.inference) calls `stylize_tiled` for an image whose activations would exceed
the memory cap ($INSTYLE_MAX_MEMORY_MB, the archive's `handler.max_memory_mb`, the CLI's
--max_memory_mb; pipeline.serve.limits). It runs the generator's own modules
(pipeline.model.generators.ResidualGenerator): its convolutions tile by tile, its norms with
statistics gathered over the whole image (`InstanceNorm2d.with_statistics`), its output activation.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.generators import ResidualGenerator
from pipeline.model.layers import depth_to_space, space_to_depth
from pipeline.model.norms import InstanceNorm2d


# How it works.
#
# Instance norm needs each layer's mean and variance over the *whole* image, so tiles cannot
# simply be run through the network one by one (each would get its own statistics: seams and
# colour shifts). `stylize_tiled` runs the residual generator layer group by layer group:
#   head   (full → ¼ resolution): three passes over overlapping tiles; pass k recomputes the
#          cheap first layers and accumulates the whole-image sums of layer k (float64), the
#          third writes the ¼-resolution result into one buffer;
#   middle (the residual blocks, ¼ resolution, 1/16 of the pixels): whole-tensor statistics,
#          convolutions tile by tile into two preallocated buffers, norms in place;
#   tail   (¼ → full resolution): three passes again (two gather statistics, one writes the
#          output tile by tile).
# Reflection padding is applied where a tile touches the image border and real neighbouring
# pixels are used elsewhere, so every layer sees exactly what it sees untiled: the result equals
# the untiled model's up to float rounding (tests/test_tiling.py), for ~1.5× the compute. The compact
# layout (pipeline.model.generators) is the same walk: its space-to-depth entry and depth-to-space exit
# are applied per tile, its body is at ⅛ resolution, its `down` and `up` are shorter.

# Memory per input pixel, in float32 values, as a function of the generator's width (the residual
# blocks run at 1/16 of the pixels in buffers they reuse: their depth does not move the peak). Untiled:
# the full-resolution decoder stage holds ~6·width values per pixel at its peak (upsampled input,
# padding, conv output), plus ~24 for the image, its padded and channels-last copies and the output.
# Measured peak RSS growth of one call of the inference form on 1536×1024 in a fresh process (2
# threads, ru_maxrss after minus before): 180 / 283 / 493 / 985 bytes per pixel for width 8 / 16 /
# 32 / 64, below this estimate (288 / 480 / 864 / 1632) by a margin that covers the other forms
# (.pt, .onnx) and the allocator's slack.
UNTILED_VALUES_PER_WIDTH, UNTILED_VALUES_FIXED = 6, 24
TILE_VALUES_PER_WIDTH, TILE_VALUES_FIXED = 9, 24  # per output-tile pixel, halo and intermediates included
DEFAULT_WIDTH = 32  # models whose width is unknown (a generator trained elsewhere, another architecture)


def model_width(model: Any) -> int:
    """The width of the memory estimate for a loaded model's generator: its base channel count, scaled
    for the compact layout (`ResidualGenerator.memory_width`); DEFAULT_WIDTH when unknown."""
    generator = model if isinstance(model, ResidualGenerator) else getattr(model, "instyle_generator", None)
    return generator.memory_width if isinstance(generator, ResidualGenerator) else DEFAULT_WIDTH


def untiled_bytes(h: int, w: int, batch: int = 1, width: int = DEFAULT_WIDTH) -> int:
    """Estimated peak activation memory of one untiled call on `batch` images of h × w."""
    return 4 * (UNTILED_VALUES_PER_WIDTH * width + UNTILED_VALUES_FIXED) * h * w * batch


def tile_for_cap(cap: int, width: int = DEFAULT_WIDTH) -> int:
    """Output tile side (multiple of 64) whose scratch memory fits in a quarter of the cap."""
    per_pixel = 4 * (TILE_VALUES_PER_WIDTH * width + TILE_VALUES_FIXED)
    side = int(math.sqrt(cap / 4 / per_pixel)) // 64 * 64
    return max(128, min(1024, side))


def tileable_generator(model: Any) -> Optional[ResidualGenerator]:
    """The eager generator behind a loaded model when `stylize_tiled` implements it (residual generator,
    instance norm, reflection padding, nearest upsampling), else None. `.pt`, `.pt2` and `.onnx` files
    loaded by `load_model` carry it as `model.instyle_generator` (rebuilt from their metadata and weights)."""
    generator = model if isinstance(model, ResidualGenerator) else getattr(model, "instyle_generator", None)
    return generator if isinstance(generator, ResidualGenerator) and generator.tileable else None


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


def _conv(p: _Piece, conv: nn.Conv2d) -> _Piece:
    """`conv` (reflection-padded by k // 2 at the image border, real neighbours elsewhere) on a piece."""
    pad, stride = conv.kernel_size[0] // 2, conv.stride[0]
    top, bottom = (pad if p.r0 == 0 else 0), (pad if p.r1 == p.H else 0)
    left, right = (pad if p.c0 == 0 else 0), (pad if p.c1 == p.W else 0)
    t = F.pad(p.t, (left, right, top, bottom), mode="reflect") if top or bottom or left or right else p.t
    r0, r1, rs, re, H = _conv_span(p.r0, p.r1, p.H, pad, stride, top, bottom)
    c0, c1, cs, ce, W = _conv_span(p.c0, p.c1, p.W, pad, stride, left, right)
    return _Piece(F.conv2d(t[:, :, rs:re, cs:ce], conv.weight, conv.bias, stride), r0, r1, c0, c1, H, W)


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

    def affine(self, norm: InstanceNorm2d, cond: "_Cond") -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s / self.n
        var = (self.ss / self.n - mean * mean).clamp_min(0)
        return norm.with_statistics(mean, var, *cond)


_Cond = tuple[Optional[torch.Tensor], Optional[torch.Tensor]]  # (style weights, strength features) of one image


def _norm(p: _Piece, affine: tuple[torch.Tensor, torch.Tensor], relu: bool = True) -> _Piece:
    t = torch.addcmul(affine[1], p.t, affine[0])
    return _Piece(t.relu_() if relu else t, p.r0, p.r1, p.c0, p.c1, p.H, p.W)


def _norm_whole_(t: torch.Tensor, norm: InstanceNorm2d, cond: _Cond, relu: bool) -> None:
    var, mean = torch.var_mean(t, dim=(0, 2, 3), unbiased=False)
    scale, shift = norm.with_statistics(mean, var, *cond)
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


def stylize_tiled(generator: ResidualGenerator, x: torch.Tensor, tile: int = 512, style: Optional[torch.Tensor] = None,
                  strength: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`generator(x, style, strength)` on (B, 3, H, W) in [0, 1], in tiles of about `tile`² output pixels
    with whole-image instance-norm statistics; `style` (B, N) and `strength` (B,) as the generator takes
    them (None: its first style at full strength)."""
    if not generator.tileable:
        raise ValueError("tiled inference implements the residual and compact generators with instance norm, "
                         "reflection padding and nearest upsampling")
    with torch.inference_mode():
        x = x.contiguous()
        wts, hid = generator.conditioning(x, style, strength)
        mix = generator.mix(x, strength)  # the strength's mix with the photo at the output (or None)
        outputs = []
        for i in range(x.shape[0]):
            cond = (None if wts is None else wts[i:i + 1], None if hid is None else hid[i:i + 1])
            outputs.append(_tiled_one(generator, x[i:i + 1], tile, cond, None if mix is None else mix[i:i + 1]))
        return torch.cat(outputs)


def _unshuffle(p: _Piece, f: int) -> _Piece:
    """The generator's space-to-depth entry on a piece whose rows and columns are multiples of `f`."""
    return _Piece(space_to_depth(p.t, f), p.r0 // f, p.r1 // f, p.c0 // f, p.c1 // f, p.H // f, p.W // f)


def _tiled_one(g: ResidualGenerator, x: torch.Tensor, tile: int, cond: _Cond,
               mix: Optional[torch.Tensor] = None) -> torch.Tensor:
    h, wd = x.shape[-2:]
    D, f = g.multiple, g.shuffle  # the body's scale (4 classic, 8 compact), the entry's space-to-depth factor
    H, W = max(-(-h // D), 4) * D, max(-(-wd // D), 4) * D  # as layers.pad_to_multiple(x, D, 4·D)
    xp = F.pad(x, (0, W - wd, 0, H - h), mode="replicate")
    Hq, Wq, tq = H // D, W // D, max(4, tile // D)
    # the layers by the names the generator gives them (pipeline.model.layers), ReLU after each norm here
    down = [(unit.conv, unit.norm) for unit in g.down]
    up = [(stage.unit.conv, stage.unit.norm) for stage in g.up]  # each after a nearest ×2 upsampling
    out_conv = g.out.conv
    tiles = _grid(Hq, Wq, tq)  # in body-resolution units
    # input rows each side a body tile needs (the entry's padding and every layer's reach), in whole body pixels
    reach = f * sum((c.kernel_size[0] // 2) * (2 ** i) for i, (c, _) in enumerate(down))
    halo_in = -(-reach // D) * D
    # body rows each side an output tile needs: the decoder's reach, scaled down to the body
    halo_body = 1 + sum((c.kernel_size[0] // 2) / 2 ** (i + 1) for i, (c, _) in enumerate(up))
    halo_body = int(halo_body + (out_conv.kernel_size[0] // 2) / 2 ** len(up)) + 1

    def head(q0: int, q1: int, p0: int, p1: int, depth: int, affines: list) -> torch.Tensor:
        r0, r1, c0, c1 = max(0, D * q0 - halo_in), min(H, D * q1 + halo_in), max(0, D * p0 - halo_in), min(W, D * p1 + halo_in)
        p = _Piece(xp[:, :, r0:r1, c0:c1], r0, r1, c0, c1, H, W)
        p = _conv(_unshuffle(p, f) if f > 1 else p, down[0][0])
        for level in range(1, depth):
            p = _conv(_norm(p, affines[level - 1]), down[level][0])
        k = 2 ** (len(down) - depth)  # the scale of this layer's rows relative to the body
        return p.crop(k * q0, k * q1, k * p0, k * p1).t

    affines: list = []
    for depth in range(1, len(down)):
        stats = _Stats()
        for q in tiles:
            stats.add(head(*q, depth, affines))
        affines.append(stats.affine(down[depth - 1][1], cond))
    y = torch.empty(1, down[-1][0].out_channels, Hq, Wq, dtype=x.dtype, device=x.device)
    for q0, q1, p0, p1 in tiles:
        y[:, :, q0:q1, p0:p1] = head(q0, q1, p0, p1, len(down), affines)
    _norm_whole_(y, down[-1][1], cond, relu=True)

    a, b = torch.empty_like(y), torch.empty_like(y)
    mid_tiles = _grid(Hq, Wq, 2 * tq)
    for block in g.res:  # two conv-norm layers, then the identity shortcut
        for (src, dst), (conv, norm, relu) in zip(((y, a), (a, b)), block.layers()):
            for q0, q1, p0, p1 in mid_tiles:
                r0, r1, c0, c1 = max(0, q0 - 1), min(Hq, q1 + 1), max(0, p0 - 1), min(Wq, p1 + 1)
                piece = _conv(_Piece(src[:, :, r0:r1, c0:c1], r0, r1, c0, c1, Hq, Wq), conv)
                dst[:, :, q0:q1, p0:p1] = piece.crop(q0, q1, p0, p1).t
            _norm_whole_(dst, norm, cond, relu)
        y.add_(b)
    del a, b

    def tail(q0: int, q1: int, p0: int, p1: int, depth: int, affines: list) -> torch.Tensor:
        r0, r1, c0, c1 = max(0, q0 - halo_body), min(Hq, q1 + halo_body), max(0, p0 - halo_body), min(Wq, p1 + halo_body)
        p = _conv(_up(_Piece(y[:, :, r0:r1, c0:c1], r0, r1, c0, c1, Hq, Wq)), up[0][0])
        for level in range(1, min(depth, len(up))):
            p = _conv(_up(_norm(p, affines[level - 1])), up[level][0])
        if depth > len(up):
            p = _conv(_norm(p, affines[-1]), out_conv)
        k = 2 ** min(depth, len(up))
        return p.crop(k * q0, k * q1, k * p0, k * p1).t

    affines = []
    for depth in range(1, len(up) + 1):
        stats = _Stats()
        for q in tiles:
            stats.add(tail(*q, depth, affines))
        affines.append(stats.affine(up[depth - 1][1], cond))
    if f > 1:  # the compact exit's photo shortcut: its instance norm with the whole image's statistics
        var, mean = torch.var_mean(xp.double().reshape(1, 3, H // f, f, W // f, f), dim=(2, 4), unbiased=False)
        var, mean = var[0].permute(1, 2, 0).reshape(-1), mean[0].permute(1, 2, 0).reshape(-1)  # (u, v, c) order
        scale = torch.rsqrt(var + g.skip.eps)
        skip_affine = (scale.to(x.dtype).view(1, -1, 1, 1), (-mean * scale).to(x.dtype).view(1, -1, 1, 1))
    out = torch.empty(1, 3, H, W, dtype=x.dtype, device=x.device)
    for q0, q1, p0, p1 in tiles:
        rows, cols = slice(D * q0, D * q1), slice(D * p0, D * p1)
        y_tile = tail(q0, q1, p0, p1, len(up) + 1, affines)
        if f > 1:
            normed = torch.addcmul(skip_affine[1], space_to_depth(xp[:, :, rows, cols], f), skip_affine[0])
            y_tile = depth_to_space(y_tile + g.skip.conv(normed), f)
        out[:, :, rows, cols] = g.activate(y_tile, xp[:, :, rows, cols], mix)
    return out[:, :, :h, :wd]
