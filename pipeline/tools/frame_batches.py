"""Many frames through the image path: batches of `batch` frames, each stylized exactly as
`pipeline.serve.inference` stylizes one image (same options, resize, model call and colours).

Used by `pipeline.tools.video` for videos, animations and folders of frames. Frames stream through:
at most one batch is held, whatever the clip's length.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, Mapping, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from pipeline.serve.color import preserve_color
from pipeline.serve.controls import ModelControls, conditioning
from pipeline.common.image_codec import DecodedImage, limit_side, to_uint8
from pipeline.serve.options import Options, parse_options
from pipeline.serve.inference import run_batch, size_groups
from pipeline.serve.precision import DEFAULT_PRECISION

T = TypeVar("T")


def frame_options(params: Mapping[str, str], server_max_side: int, controls: ModelControls | None) -> Options:
    """The request options, validated and resolved against the model once for every frame
    (what `pipeline.serve.inference.prepare` does per image)."""
    options = parse_options(params, server_max_side)
    if controls is not None:
        options = options.with_conditioning(conditioning({"style": options.style, "strength": options.strength}, controls))
    return options


def rgb_image(rgb: np.ndarray, options: Options) -> DecodedImage:
    """An (H, W, 3) uint8 RGB frame as `decode` gives an RGB PNG of it ((3, H, W) float32 = value / 255),
    downscaled to the allowed side as `prepare` does."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {rgb.dtype} {rgb.shape}")
    t = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float().div_(255.0).contiguous()
    return limit_side(DecodedImage(rgb=t, alpha=None), options.max_side)


def stylize_stream(model: Any, items: Iterable[tuple[DecodedImage, T]], options: Options, batch: int,
                   device: str | torch.device = "cpu",
                   max_memory_mb: int | None = None,
                   precision: str = DEFAULT_PRECISION) -> Iterator[tuple[torch.Tensor, DecodedImage, T]]:
    """(stylized (3, H, W) float in [0, 1], the frame, its tag) in input order, `batch` frames per
    model call (same-size frames together: `run_batch`, which falls back to one at a time or tiles
    over the memory cap). With `options.preserve_color` the frame's colours are put back, as
    `pipeline.serve.inference.finish` does. Batches of 1 give the image CLI's exact pixels; larger
    batches may differ from them by float rounding in the convolutions (≤ 1 level in 8 bit)."""
    if batch < 1:
        raise ValueError(f"batch={batch}: give at least 1 frame per model call")
    pending: list[tuple[DecodedImage, T]] = []
    for item in items:
        pending.append(item)
        if len(pending) == batch:
            yield from _run(model, pending, options, device, max_memory_mb, precision)
            pending = []
    if pending:
        yield from _run(model, pending, options, device, max_memory_mb, precision)


def _run(model: Any, pending: list[tuple[DecodedImage, T]], options: Options, device: str | torch.device,
         max_memory_mb: int | None, precision: str) -> Iterator[tuple[torch.Tensor, DecodedImage, T]]:
    images = [image for image, _ in pending]
    out: list[torch.Tensor | None] = [None] * len(images)
    for group in size_groups(images):  # never pad frames of different sizes into one batch
        ys = run_batch(model, [images[i] for i in group], device, max_memory_mb, [options.conditioning] * len(group),
                       precision)
        for i, y in zip(group, ys):
            out[i] = preserve_color(y, images[i].rgb) if options.preserve_color else y
    for (image, tag), y in zip(pending, out):
        yield y, image, tag


def opaque_uint8(stylized: torch.Tensor, image: DecodedImage) -> np.ndarray:
    """(H, W, 3) uint8 for formats without alpha (video): composited over white, as `encode` does for JPEG."""
    if image.alpha is not None:
        stylized = stylized * image.alpha + (1 - image.alpha)
    return to_uint8(stylized)


class Progress:
    """Frames done and frames/s on stderr (a tqdm bar; nothing when not `enabled`)."""

    def __init__(self, total: int | None, label: str, enabled: bool = True):
        self.done, self.start = 0, time.perf_counter()
        self.bar = tqdm(total=total or None, desc=label, unit="frame", file=sys.stderr, dynamic_ncols=True,
                        disable=not enabled)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)

    def close(self) -> float:
        """Stop; returns the frames per second achieved."""
        self.bar.close()
        return self.done / max(time.perf_counter() - self.start, 1e-9)
