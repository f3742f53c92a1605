"""A request's options (`format`, `quality`, `max_side`, `preserve_color`, `style`, `strength`) read
from query parameters or CLI flags, validated once for the handler and the offline tools."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from pipeline.common.image_codec import FORMAT_ALIASES, FORMATS, BadImageRequest

BOOLEANS = {"": False, "false": False, "0": False, "no": False, "true": True, "1": True, "yes": True}


@dataclass(frozen=True)
class Options:
    format: str = "png"
    quality: int = 90
    max_side: int | None = None
    preserve_color: bool = False
    style: str | None = None  # as sent; resolved against the model by pipeline.serve.controls
    strength: str | None = None
    conditioning: Any = None  # pipeline.serve.controls.Conditioning once resolved (None: the model's default)

    def with_conditioning(self, conditioning: Any) -> "Options":
        return replace(self, conditioning=conditioning)


def parse_options(params: Mapping[str, str], server_max_side: int) -> Options:
    """Validate request options (`format`, `quality`, `max_side`, `preserve_color`; `style` and
    `strength` are kept as text for `pipeline.serve.controls`); `max_side` is capped by the server's."""
    p = {k.lower(): str(v).strip() for k, v in params.items() if v is not None}
    raw_format = (p.get("format") or "png").lower()  # empty means default, as for the integer options
    fmt = FORMAT_ALIASES.get(raw_format, raw_format)
    if fmt not in FORMATS:
        raise BadImageRequest(f"format={p['format']!r} is not supported; use one of {', '.join(FORMATS)}")
    quality = _int_option(p, "quality", 90, 1, 100)
    max_side = _int_option(p, "max_side", server_max_side, 1, None)
    preserve = p.get("preserve_color", "").lower()
    if preserve not in BOOLEANS:
        raise BadImageRequest(f"preserve_color={p['preserve_color']!r}: use true or false")
    return Options(format=fmt, quality=quality, max_side=min(max_side, server_max_side), preserve_color=BOOLEANS[preserve],
                   style=p.get("style") or None, strength=p.get("strength") or None)


def _int_option(p: Mapping[str, str], name: str, default: int, lo: int, hi: int | None) -> int:
    if name not in p or p[name] == "":
        return default
    try:
        value = int(p[name])
    except ValueError:
        raise BadImageRequest(f"{name}={p[name]!r} is not an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise BadImageRequest(f"{name}={value} is out of range [{lo}, {hi if hi is not None else '∞'}]")
    return value
