"""One HTTP request's image bytes and options, read the way TorchServe hands them to a worker: a row of
fields (the raw body as `body`/`data`, each multipart field under its name, query parameters) and the
headers. Both servers' adapters build such a row (handlers/stylize_handler.py, handlers/ray_serve.py),
so the same request gives the same options and the same errors on either."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from pipeline.common.image_codec import BadImageRequest
from pipeline.serve.options import Options

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Options) if f.name != "conditioning")
IMAGE_FIELDS = ("data", "body")  # TorchServe's names for a raw body; a multipart field keeps its own name
ROUTING_PARAMS = ("model_name", "model_version")  # query parameters /invocations uses for routing
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def split_request(row: Mapping[str, Any], headers: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """(image bytes, options) from one request row; options come from X-Format-style headers
    (case-insensitive), overridden by form/query/gRPC fields. BadImageRequest names what is wrong."""
    lower = {k.lower(): v for k, v in headers.items() if isinstance(v, str)}  # non-str: per-field content types
    if lower.get("content-type", "").lower().startswith(FORM_CONTENT_TYPE):
        # TorchServe parses such bodies as url-encoded forms, which mangles binary data.
        raise BadImageRequest("Content-Type application/x-www-form-urlencoded cannot carry an image (curl --data-binary "
                              "sends it by default): send Content-Type image/jpeg, image/png or application/octet-stream, "
                              "or a multipart form field", 415)
    params = {}
    for name in OPTION_NAMES:
        key = next((k for k in (f"x-{name.replace('_', '-')}", f"x-{name}") if k in lower), None)
        if key:
            params[name] = lower[key]
    candidates = {}
    for key, value in row.items():
        if key.lower() in ROUTING_PARAMS:
            continue
        if key.lower() in OPTION_NAMES:
            params[key.lower()] = _text(key, value)
        else:
            candidates[key] = value
    preferred = [k for k in IMAGE_FIELDS if k in candidates]
    if preferred:
        image_key = preferred[0]
    elif len(candidates) == 1:
        image_key = next(iter(candidates))
    elif not candidates:
        raise BadImageRequest("no image in the request: send the image bytes as the body or as one multipart field")
    else:
        raise BadImageRequest(f"several fields ({', '.join(sorted(candidates))}) could be the image; send exactly one")
    unknown = sorted(k for k in candidates if k != image_key)
    if unknown:
        raise BadImageRequest(f"unknown parameter(s) {', '.join(unknown)}; options are {', '.join(OPTION_NAMES)}")
    data = candidates[image_key]
    if isinstance(data, bytearray):
        data = bytes(data)
    if not isinstance(data, bytes):
        # TorchServe decoded a text/* or JSON body: those content types cannot carry raw image bytes.
        raise BadImageRequest("the body was sent as text or JSON; send the raw image bytes with Content-Type "
                              "image/* or application/octet-stream", 415)
    return data, params


def _text(key: str, value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadImageRequest(f"parameter {key} is not UTF-8 text") from None
    return str(value)


def field_value(content_type: str, value: bytes) -> Any:
    """A field's value as TorchServe's worker hands it over (ts.protocol.otf_message_handler): a JSON field
    parsed, a text/* field decoded, anything else the bytes; for an adapter that reads HTTP itself."""
    content_type = (content_type or "").split(";")[0].strip().lower()
    try:
        if content_type == "application/json":
            return json.loads(value.decode("utf-8"))
        if content_type.startswith("text"):
            return value.decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        pass  # forwarded as bytes, as TorchServe does
    return value
