"""Style fingerprints: a style image as a 32×32 thumbnail, stored with a model's styles, so a painting
added twice (`make train FROM=…`, pipeline/train/adapt.py) is recognised whatever its file's name,
format or size."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.common.image_sources import SKIMAGE, image_exists, load_style, style_name
from pipeline.model.checkpoint import checkpoint_of, read_checkpoint, style_names
from pipeline.model.packaged_format import MODELS_DIR

# A style image as a 32×32 RGB thumbnail in levels 0..255: the same for a re-encoded, resized or renamed
# copy. Measured on ../shared's paintings: copies of one painting differ by ≤ 0.006 (mean absolute, in
# 0..1), distinct paintings and textures by ≥ 0.059 (12×12 thumbnails could not tell brick from grass).
FINGERPRINT_SIZE = 32
SAME_PAINTING = 0.02
REPO = MODELS_DIR.parent  # relative style paths in a packaged model's description: the repository's


def fingerprint(image: torch.Tensor) -> list[int]:
    """A style image (1, 3, H, W) in [0, 1] as a small thumbnail (levels 0..255, row-major RGB)."""
    thumb = F.adaptive_avg_pool2d(image.float(), FINGERPRINT_SIZE)
    return [int(v) for v in (thumb.flatten() * 255).round().clamp(0, 255)]


def style_fingerprints(ckpt: dict[str, Any], depth: int = 0) -> list[list[int] | None]:
    """The fingerprints of a checkpoint's styles, in its order: the stored ones where valid, else from the
    style image its description names (a path relative to the working directory or to this
    repository, where the starter was trained), else from its FROM (`init_from`), else None."""
    names = style_names(ckpt)
    stored = list(ckpt.get("style_fingerprints") or [])
    found: list[list[int] | None] = [p if p and len(p) == 3 * FINGERPRINT_SIZE ** 2 else None for p in stored]
    found += [None] * (len(names) - len(found))
    hp = dict(ckpt.get("hyper_parameters") or {})
    by_name = {style_name(s): s for s in _specs(hp.get("style_image"))}
    origin = hp.get("init_from")
    inherited: dict[str, list[int] | None] = {}
    if origin and depth < 8 and None in found:
        try:
            parent = read_checkpoint(checkpoint_of(str(origin)))
            inherited = dict(zip(style_names(parent), style_fingerprints(parent, depth + 1)))
        except (FileNotFoundError, ValueError):
            pass
    for i, name in enumerate(names):
        if found[i] is None and name in by_name:
            found[i] = fingerprint(load_style(by_name[name], 256))
        elif found[i] is None:
            found[i] = inherited.get(name)
    return found


def _specs(spec: Any) -> list[str]:
    """The style images of a description's `style_image` that exist here (relative paths also against
    this repository's folder); [] when none can be found."""
    if not spec:
        return []
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        candidates = [part] if part.startswith(SKIMAGE) or Path(part).is_absolute() else [part, str(REPO / part)]
        out += next(([c] for c in candidates if image_exists(c)), [])
    return out


def distance(a: list[int], b: list[int]) -> float:
    """Mean absolute difference of two fingerprints, in 0..1."""
    return float((torch.tensor(a, dtype=torch.float32) - torch.tensor(b, dtype=torch.float32)).abs().mean()) / 255
