"""The request-independent core shared by the TorchServe handler and the offline CLI.

bytes + options → `prepare` → `size_groups` / `run_batch` (model) → `finish` → bytes. The handler and
`python -m pipeline stylize` call exactly these functions, so their pixels are the same.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from pipeline.serve.color import preserve_color
from pipeline.serve.imaging import DecodedImage, Options, decode, encode, limit_side, parse_options
from pipeline.serve.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, memory_cap_bytes
from pipeline.serve.tiling import generator_output, generator_weights, stylize_tiled, tile_for_cap, untiled_bytes


def prepare(data: bytes, params: Mapping[str, str], max_side: int = DEFAULT_MAX_SIDE,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[DecodedImage, Options]:
    """Validate options, decode (pixel cap checked before decoding) and downscale to the allowed side."""
    options = parse_options(params, max_side)
    image = limit_side(decode(data, max_pixels), options.max_side)
    return image, options


def size_groups(images: Sequence[DecodedImage]) -> list[list[int]]:
    """Indices of same-size images, grouped, in first-seen order.

    Images of different sizes are never padded into one batch: padding would change every
    instance-norm statistic and so the result.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.size, []).append(i)
    return list(groups.values())


def run_batch(model: Callable[[torch.Tensor], torch.Tensor], images: Sequence[DecodedImage],
              device: torch.device | str = "cpu", max_memory_mb: int | None = None) -> list[torch.Tensor]:
    """Stylize same-size images; returns (3, H, W) float CPU tensors in input order.

    Within the memory cap (`max_memory_mb`, else $INSTYLE_MAX_MEMORY_MB, else 2048 MB of
    activations) the images run as one batch; a batch over the cap runs image by image, and an
    image over the cap on its own runs tiled (`stylize_tiled`: same result, bounded memory)
    when the model's weights are known (see `generator_weights`)."""
    cap = memory_cap_bytes(max_memory_mb)
    h, w = images[0].size
    with torch.inference_mode():
        if untiled_bytes(h, w, len(images)) <= cap:
            batch = torch.stack([img.rgb for img in images]).to(device)
            return list(model(batch).float().cpu())
        weights = generator_weights(model) if untiled_bytes(h, w, 1) > cap else None
        outputs = []
        for img in images:
            x = img.rgb[None].to(device)
            y = stylize_tiled(weights, x, tile_for_cap(cap), generator_output(model)) if weights is not None else model(x)
            outputs.append(y[0].float().cpu())
        return outputs


def finish(stylized: torch.Tensor, image: DecodedImage, options: Options) -> tuple[bytes, str]:
    """Encode the stylized RGB (with the photo's colours if asked) with the input's alpha in the requested format."""
    if options.preserve_color:
        stylized = preserve_color(stylized, image.rgb)
    return encode(stylized, image.alpha, options.format, options.quality)
