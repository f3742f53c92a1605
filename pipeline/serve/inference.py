"""The request-independent core shared by the TorchServe handler and the offline CLI.

bytes + options → `prepare` → `size_groups` / `run_batch` (model) → `finish` → bytes. The handler and
`python -m pipeline stylize` call exactly these functions, so their pixels are the same.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from pipeline.serve.color import preserve_color
from pipeline.serve.controls import Conditioning, ModelControls, call_model, condition_tensors, conditioning
from pipeline.common.image_codec import DecodedImage, decode, encode, limit_side, model_input
from pipeline.serve.options import Options, parse_options
from pipeline.serve.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, memory_cap_bytes
from pipeline.serve.precision import DEFAULT_PRECISION, precision_mode
from pipeline.serve.tiling import model_width, stylize_tiled, tile_for_cap, tileable_generator, untiled_bytes


def prepare(data: bytes, params: Mapping[str, str], max_side: int = DEFAULT_MAX_SIDE,
            max_pixels: int = DEFAULT_MAX_PIXELS, controls: ModelControls | None = None) -> tuple[DecodedImage, Options]:
    """Validate options (the style controls against the model's `controls`) before anything is
    decoded, then decode (pixel cap checked before decoding) and downscale to the allowed side.
    The resolved style weights and strength are in `options.conditioning`."""
    options = parse_options(params, max_side)
    if controls is not None:
        options = options.with_conditioning(conditioning({"style": options.style, "strength": options.strength}, controls))
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


def run_batch(model: Callable[..., torch.Tensor], images: Sequence[DecodedImage],
              device: torch.device | str = "cpu", max_memory_mb: int | None = None,
              conditions: Sequence[Conditioning | None] | None = None, precision: str = DEFAULT_PRECISION,
              tiled: bool = False) -> list[torch.Tensor]:
    """Stylize same-size images; returns (3, H, W) float CPU tensors in input order.

    `conditions`: each image's style weights and strength (`Options.conditioning`; None: the model's
    first style at full strength); one batch may mix them. The model's controls are
    `model.instyle_controls` (set by `load_model`). The pixels cross to `device` as decoded (8 bit)
    and are converted there; every tensor made here is made on `device`. `precision`: auto | fp32 |
    bf16 | fp16 (`pipeline.serve.precision`: low precision for the convolutions only).

    Within the memory cap (`max_memory_mb`, else $INSTYLE_MAX_MEMORY_MB, else 2048 MB of
    activations) the images run as one batch; a batch over the cap runs image by image, and an
    image over the cap on its own runs tiled (`stylize_tiled`: same result, bounded memory)
    when the model's generator is known (see `tileable_generator`); `tiled=True` tiles every image
    whose generator is known (the handler's retry after running out of device memory). The activation
    estimate follows the generator's width (`tiling.untiled_bytes`)."""
    cap = memory_cap_bytes(max_memory_mb)
    mode = precision_mode(device, precision, model)  # checks `precision` before any work
    h, w = images[0].size
    controls: ModelControls | None = getattr(model, "instyle_controls", None)
    if controls is not None and controls.conditioned:
        default = Conditioning(tuple(1.0 if i == 0 else 0.0 for i in range(len(controls.styles))))
        conds = [c or default for c in (conditions or [None] * len(images))]
    else:
        conds = None
    width = model_width(model)
    with torch.inference_mode(), mode:
        if not tiled and untiled_bytes(h, w, len(images), width) <= cap:
            return list(call_model(model, device_batch(images, device), conds, controls).float().cpu())
        generator = tileable_generator(model) if tiled or untiled_bytes(h, w, 1, width) > cap else None
        outputs = []
        for i, img in enumerate(images):
            x = device_batch([img], device)
            if generator is not None:
                style, strength = condition_tensors(None if conds is None else [conds[i]], controls, x)
                y = stylize_tiled(generator, x, tile_for_cap(cap, width), style, strength)
            else:
                y = call_model(model, x, None if conds is None else [conds[i]], controls)
            outputs.append(y[0].float().cpu())
        return outputs


def device_batch(images: Sequence[DecodedImage], device: torch.device | str) -> torch.Tensor:
    """(B, 3, H, W) float32 in [0, 1] on `device`: 8-bit pixels are moved as they are and converted there."""
    pixels = [img.pixels for img in images]
    if any(p.dtype != pixels[0].dtype for p in pixels):  # a resized image (float) among decoded ones
        pixels = [model_input(p) for p in pixels]
    return model_input(torch.stack(pixels).to(device))


def finish(stylized: torch.Tensor, image: DecodedImage, options: Options) -> tuple[bytes, str]:
    """Encode the stylized RGB (with the photo's colours if asked) with the input's alpha in the requested format."""
    if options.preserve_color:
        stylized = preserve_color(stylized, image.rgb)
    return encode(stylized, image.alpha, options.format, options.quality)
