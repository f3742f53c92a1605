"""The request-independent core shared by the TorchServe handler and the offline CLI.

bytes + options → `prepare` → `size_groups` / `run_batch` (model) → `finish` → bytes. The handler and
`python -m pipeline stylize` call exactly these functions, so their pixels are the same.
Bundled into the .mar together with `imaging.py`; imports nothing else from the project.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import torch

try:  # the project package (dev, tests, CLI) or the copy bundled in the .mar's pipeline/ folder
    from pipeline.imaging import DEFAULT_MAX_PIXELS, BadImageRequest, DecodedImage, Options, decode, encode, limit_side, parse_options
except ImportError:  # this file copied flat next to imaging.py
    from imaging import DEFAULT_MAX_PIXELS, BadImageRequest, DecodedImage, Options, decode, encode, limit_side, parse_options  # type: ignore[no-redef]

DEFAULT_MAX_SIDE = 4096  # longest side the model ever sees (4K); larger inputs are downscaled
ENV_MAX_SIDE = "INSTYLE_MAX_SIDE"
ENV_MAX_PIXELS = "INSTYLE_MAX_PIXELS"


def server_limits(config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(max_side, max_pixels): environment ($INSTYLE_MAX_SIDE, $INSTYLE_MAX_PIXELS) over `config`
    (the `handler:` section of the model's model-config.yaml) over the defaults."""
    config = config or {}
    env = os.environ if env is None else env

    def pick(env_name: str, key: str, default: int) -> int:
        raw = env.get(env_name) or config.get(key)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{env_name if env.get(env_name) else key}={raw!r} is not an integer") from None
        if value < 1:
            raise ValueError(f"{key} must be ≥ 1, got {value}")
        return value

    return pick(ENV_MAX_SIDE, "max_side", DEFAULT_MAX_SIDE), pick(ENV_MAX_PIXELS, "max_pixels", DEFAULT_MAX_PIXELS)


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
              device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Stylize same-size images as one batch; returns (3, H, W) float CPU tensors in input order."""
    with torch.inference_mode():
        batch = torch.stack([img.rgb for img in images]).to(device)
        return list(model(batch).float().cpu())


def finish(stylized: torch.Tensor, image: DecodedImage, options: Options) -> tuple[bytes, str]:
    """Encode the stylized RGB with the input's alpha in the requested format."""
    return encode(stylized, image.alpha, options.format, options.quality)


__all__ = ["BadImageRequest", "DEFAULT_MAX_SIDE", "DEFAULT_MAX_PIXELS", "server_limits", "prepare", "size_groups", "run_batch", "finish"]
