"""TorchServe handler: image bytes in, stylized image bytes out (same size as the input after
the optional downscale to `max_side`).

Request: the image as the raw body (Content-Type image/* or application/octet-stream) or as
one multipart/form-data field of any name (over gRPC: one entry of the request's `input` map).
Options as headers (`X-Format`, `X-Quality`, `X-Max-Side`, `X-Preserve-Color`, `X-Style`,
`X-Strength`), form fields, gRPC input fields or query parameters; those win over headers.
TorchServe 0.12 drops the query string on /predictions/NAME (its frontend passes no query
decoder there); it forwards it on /invocations?model_name=NAME&... and /NAME/predict?...
  format   png (default) | jpeg | webp
  quality  1..100 for jpeg/webp (default 90)
  max_side downscale so the longer side is ≤ this; capped by the server's limit
  preserve_color  true: the stylized luminance with the photo's colours (default false)
  style    a style of the model (`starry_night`) or a mix (`starry_night:0.7,the_great_wave:0.3`,
           weights ≥ 0, normalized); default: the model's first style
  strength 0..1, the style/content balance of a model trained with the strength control (default 1)
Bad input → 4xx with a JSON body {"error": ..., "status": ..., "styles": [...]}; only that request
fails, the rest of the batch and the worker carry on. The model's styles and training config:
TorchServe's describe API, `GET /models/NAME?customized=true` (management port).

Server limits: `handler: {max_side: 4096, max_pixels: 50000000}` in the archive's model-config.yaml,
overridden by $INSTYLE_MAX_SIDE / $INSTYLE_MAX_PIXELS. A CPU worker runs `threads` torch threads
($INSTYLE_THREADS; default: the cores shared among the model's workers, pipeline.serve.limits.cpu_threads).

GPU workers (docs/serving.md): the model runs on TorchServe's `gpu_id`; without an explicit max_memory_mb the
cap is the worker's share of the GPU's free memory. `precision` (auto | fp32 | bf16 | fp16, $INSTYLE_PRECISION)
is that of the convolutions (pipeline.serve.precision), logged and described. Out of memory: the cache is
freed and the group retried once in tiles, then 507; a CUDA error that poisons the context ends the worker.

Imports: the archive carries `pipeline/serve/` and `pipeline/model/` (pipeline.export.archive) in the model
directory, first on the worker's PYTHONPATH: the worker runs exactly the code that was archived.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Mapping

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from pipeline.serve.controls import ModelControls, call_model, model_description
from pipeline.common.image_codec import BadImageRequest
from pipeline.serve.inference import finish, prepare, run_batch, size_groups
from pipeline.serve.limits import (ENV_MAX_MEMORY, cpu_threads, device_memory_cap_mb, memory_cap_bytes,
                                   server_limits, workers_per_device)
from pipeline.common.memory import reuse_freed_memory
from pipeline.serve.model_io import load_model
from pipeline.serve.precision import DEFAULT_PRECISION, ENV_PRECISION, precision_mode, resolve_precision

logger = logging.getLogger(__name__)

OPTION_NAMES = ("format", "quality", "max_side", "preserve_color", "style", "strength")
IMAGE_FIELDS = ("data", "body")  # TorchServe's names for a raw body; a multipart field keeps its own name
ROUTING_PARAMS = ("model_name", "model_version")  # query parameters /invocations uses for routing
WORKER_RESTART_EXIT = 75  # exit status of a worker whose CUDA context is poisoned (TorchServe restarts it)
REASONS = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type", 500: "Internal Server Error",
           507: "Insufficient Storage"}


def header_options(headers: Mapping[str, Any]) -> dict[str, str]:
    """Options given as headers: X-Format, X-Quality, X-Max-Side, X-Preserve-Color, X-Style, X-Strength
    (case-insensitive)."""
    lower = {k.lower(): v for k, v in headers.items() if isinstance(v, str)}  # non-str: per-field content types
    found = {}
    for name in OPTION_NAMES:
        for key in (f"x-{name.replace('_', '-')}", f"x-{name}"):
            if key in lower:
                found[name] = lower[key]
                break
    return found


def split_request(row: Mapping[str, Any], headers: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """(image bytes, options) from one TorchServe request row; BadImageRequest names what is wrong."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type" and isinstance(v, str)), "")
    if content_type.lower().startswith("application/x-www-form-urlencoded"):
        # TorchServe parses such bodies as url-encoded forms, which mangles binary data.
        raise BadImageRequest("Content-Type application/x-www-form-urlencoded cannot carry an image (curl --data-binary "
                              "sends it by default): send Content-Type image/jpeg, image/png or application/octet-stream, "
                              "or a multipart form field", 415)
    params = header_options(headers)
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


def is_grpc(headers: Mapping[str, Any]) -> bool:
    """Whether a request came over gRPC: TorchServe gives those only per-field content types (dicts) as
    headers, while HTTP requests always carry string headers (Host, Content-Length, TorchServe's url_path)."""
    return not any(isinstance(v, str) for v in headers.values())


def is_out_of_memory(error: BaseException) -> bool:
    """Out of memory, told by the exception's type (`MemoryError`, `torch.OutOfMemoryError`), never its wording."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError))


def poisons_the_device(error: BaseException) -> bool:
    """A CUDA error after which the process's context is unusable ('an illegal memory access', 'device-side
    assert triggered', ...), told by torch's type for accelerator runtime errors (out of memory is not one)."""
    return isinstance(error, torch.AcceleratorError) and not isinstance(error, torch.OutOfMemoryError)


def error_body(status: int, message: str, styles: tuple[str, ...] = ()) -> bytes:
    return json.dumps({"error": message, "status": status, "styles": list(styles)}).encode("utf-8")


def describe(metadata: Mapping[str, Any], controls: ModelControls, precision: str, threads: int) -> dict[str, Any]:
    """`GET /models/NAME?customized=true`: `model_description`, options, this worker's precision and threads."""
    return {**model_description(metadata, controls), "options": list(OPTION_NAMES), "precision": precision,
            "threads": threads}


class StylizeHandler(BaseHandler):
    """Style transfer with one exported generator (.pt TorchScript or .pt2 torch.export)."""

    def initialize(self, context: Any) -> None:
        """Load the model named by the manifest's serializedFile, its metadata and the limits."""
        reuse_freed_memory()  # the worker process's entry point: allocator tuning (pipeline.common.memory)
        props = context.system_properties
        self.manifest = context.manifest
        gpu = props.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        model_dir = props.get("model_dir")
        serialized = self.manifest["model"].get("serializedFile")
        if not serialized:
            raise RuntimeError("the archive has no serialized model: re-archive the run with `make archive NAME=<run>` "
                               "(python -m pipeline archive), which packs runs/<run>/export/generator.pt2")
        self.model_pt_path = os.path.join(model_dir, serialized)
        self.model, self.metadata = load_model(self.model_pt_path, self.device)
        self.controls: ModelControls = self.model.instyle_controls
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        handler_config = yaml_config.get("handler") or {}
        self.max_side, self.max_pixels = server_limits(handler_config)
        self.threads = torch.get_num_threads()
        if self.device.type == "cpu":  # workers × threads = cores (pipeline.serve.limits.cpu_threads)
            self.threads = cpu_threads(yaml_config)
            torch.set_num_threads(self.threads)
        requested = os.environ.get(ENV_PRECISION) or handler_config.get("precision") or DEFAULT_PRECISION  # env first
        self.precision = resolve_precision(requested, self.device, self.model)
        self.precision_note = f"{self.precision} (auto)" if requested == "auto" else self.precision
        with torch.inference_mode(), precision_mode(self.device, self.precision):  # warm-up: fail at load, not later
            for _ in range(2):
                call_model(self.model, torch.rand(1, 3, 32, 32, device=self.device), None, self.controls)
        # over this many MB of activations an image is stylized in tiles (whole-image norm statistics)
        self.max_memory_mb = self._memory_cap_mb(handler_config, yaml_config)
        logger.info("instyle model %s loaded on %s in %s (%s, step %s); max_side=%d max_pixels=%d max_memory_mb=%d "
                    "threads=%d", serialized, self.device, self.precision_note, self.controls.describe(),
                    self.metadata.get("global_step"), self.max_side, self.max_pixels, self.max_memory_mb, self.threads)
        self.initialized = True

    def _memory_cap_mb(self, handler_config: Mapping[str, Any], yaml_config: Mapping[str, Any]) -> int:
        """max_memory_mb as configured ($INSTYLE_MAX_MEMORY_MB, the archive's handler section); else, on a
        GPU, this worker's share of the device's free memory once the model is loaded; else the CPU default."""
        explicit = os.environ.get(ENV_MAX_MEMORY) or handler_config.get("max_memory_mb") not in (None, "")
        if explicit or self.device.type != "cuda":
            return memory_cap_bytes(config=handler_config) // 2**20
        free, _ = torch.cuda.mem_get_info(self.device)
        return device_memory_cap_mb(free, workers_per_device(yaml_config, torch.cuda.device_count()))

    def _stylize_group(self, images: list, conditions: list) -> list[torch.Tensor]:
        """run_batch on one size group; out of memory: free the device's cache and retry once in tiles
        (bounded memory, the same pixels). A CUDA error that poisons the context ends the process."""
        try:
            try:
                return run_batch(self.model, images, self.device, self.max_memory_mb, conditions, self.precision)
            except (MemoryError, torch.OutOfMemoryError):
                logger.warning("out of memory on %d image(s) of %s; retrying in tiles", len(images), images[0].size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                return run_batch(self.model, images, self.device, self.max_memory_mb, conditions, self.precision,
                                 tiled=True)
        except RuntimeError as e:
            if poisons_the_device(e):
                logger.critical("CUDA context poisoned (%s): ending the worker so TorchServe restarts it", e)
                # SystemExit passes TorchServe's `except Exception` in the worker: the process exits and
                # the frontend fails this batch and starts a fresh worker.
                sys.exit(WORKER_RESTART_EXIT)
            raise

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """Answer every request of the batch: image bytes, or a JSON error for that request only."""
        self.context = context
        if self._is_describe():  # GET /models/NAME?customized=true
            return [json.dumps(describe(self.metadata, self.controls, self.precision_note, self.threads))]
        metrics = context.metrics  # calls pass a fresh dimensions list: TorchServe's default is a shared mutable one
        # how many requests TorchServe batched into this call (the archive's batchSize / maxBatchDelay)
        metrics.add_metric("BatchSize", len(data), "count", 0, [], MetricTypes.GAUGE)
        results: list[bytes | None] = [None] * len(data)
        self._failed: dict[int, int] = {}  # request index → status of the requests that failed
        prepared = []  # (request index, image, options)
        for idx, row in enumerate(data):
            start = time.perf_counter()
            try:
                payload, params = split_request(row, context.get_all_request_header(idx) or {})
                image, options = prepare(payload, params, self.max_side, self.max_pixels, self.controls)
            except BadImageRequest as e:
                results[idx] = self._fail(context, idx, e.status, str(e))
                continue
            metrics.add_time("DecodeMs", _ms(start), idx, "ms", [])
            metrics.add_metric("Megapixels", image.size[0] * image.size[1] / 1e6, "MP", idx, [], MetricTypes.COUNTER)
            prepared.append((idx, image, options))

        images = [image for _, image, _ in prepared]
        for group in size_groups(images):
            start = time.perf_counter()
            try:
                outputs = self._stylize_group([images[i] for i in group], [prepared[i][2].conditioning for i in group])
            except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
                logger.exception("inference failed for a group of %d image(s) of %s", len(group), images[group[0]].size)
                too_big = is_out_of_memory(e)
                status, message = (507, "image too large for this server's memory; send a smaller max_side") if too_big \
                    else (500, f"inference failed: {type(e).__name__}")
                for i in group:
                    results[prepared[i][0]] = self._fail(context, prepared[i][0], status, message)
                continue
            metrics.add_time("ModelMs", _ms(start), prepared[group[0]][0], "ms", [])
            for i, stylized in zip(group, outputs):
                idx, image, options = prepared[i]
                start = time.perf_counter()
                try:
                    results[idx], content_type = finish(stylized, image, options)
                except (OSError, ValueError) as e:  # e.g. WebP's 16383 px limit if max_side was raised past it
                    results[idx] = self._fail(context, idx, 500, f"encoding {options.format} failed: {e}")
                    continue
                # lower-case key: the worker reads the response content type as "content-type"
                context.set_response_header(idx, "content-type", content_type)
                metrics.add_time("EncodeMs", _ms(start), idx, "ms", [])
        self._raise_for_grpc(results, context)
        return results  # type: ignore[return-value]

    def _raise_for_grpc(self, results: list[bytes | None], context: Any) -> None:
        """A failed gRPC request alone in its batch fails as a gRPC error status.

        TorchServe's gRPC path ignores the per-request status `_fail` sets (GRPCJob.response sends
        any body as an OK prediction); only a failed *batch* becomes a gRPC status (400 →
        INVALID_ARGUMENT, 413 → RESOURCE_EXHAUSTED, other 4xx → FAILED_PRECONDITION, 5xx → INTERNAL),
        and it fails every request of the batch. So it is raised only when the batch is this one
        request. A bad gRPC request batched with others (batchSize > 1) still gets the JSON error as
        an OK reply, which the others must not pay for: docs/serving.md says so, and
        `python -m pipeline grpc-predict` treats such a reply as an error."""
        if len(results) != 1 or not self._failed.get(0):
            return
        if is_grpc(context.get_all_request_header(0) or {}):
            status, body = self._failed[0], results[0]
            raise PredictionException(body.decode("utf-8"), status)

    def _fail(self, context: Any, idx: int, status: int, message: str) -> bytes:
        """Mark one request as failed: status line, JSON body, a BadRequests count for 4xx."""
        logger.info("request %d refused with %d: %s", idx, status, message)
        self._failed[idx] = status
        context.set_response_status(status, REASONS.get(status, "Error"), idx)
        context.set_response_header(idx, "content-type", "application/json")
        if status < 500:
            context.metrics.add_counter("BadRequests", 1, idx, [])
        return error_body(status, message, self.controls.styles)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)
