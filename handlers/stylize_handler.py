"""TorchServe handler: image bytes in, the stylized image out. Requests, options, limits, errors, GPU
workers and metrics: docs/serving.md.

TorchServe's BaseHandler.handle drives it: it answers the describe API (`describe_handle`), runs
preprocess (decode) → inference (one model call per image size) → postprocess (encode) and records
`HandlerTime`. What this handler adds is that each request of a batch is answered on its own: a bad one
gets its own 4xx JSON error (500/507 when its size group fails) while the others carry on.

The archive (pipeline.export.archive) carries pipeline.serve, .model and .common next to this file, first
on the worker's PYTHONPATH: the worker runs the code that was archived.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from http import HTTPStatus
from typing import Any, Mapping

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from pipeline.common.image_codec import BadImageRequest, DecodedImage
from pipeline.common.memory import reuse_freed_memory
from pipeline.serve.controls import ModelControls, call_model, model_description
from pipeline.serve.inference import finish, prepare, run_batch, size_groups
from pipeline.serve.limits import (ENV_MAX_MEMORY, cpu_threads, device_memory_cap_mb, memory_cap_bytes,
                                   server_limits, workers_per_device)
from pipeline.serve.model_io import load_model
from pipeline.serve.options import Options
from pipeline.serve.precision import DEFAULT_PRECISION, ENV_PRECISION, precision_mode, resolve_precision

logger = logging.getLogger(__name__)

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Options) if f.name != "conditioning")
IMAGE_FIELDS = ("data", "body")  # TorchServe's names for a raw body; a multipart field keeps its own name
ROUTING_PARAMS = ("model_name", "model_version")  # query parameters /invocations uses for routing
WORKER_RESTART_EXIT = 75  # exit status of a worker whose CUDA context is poisoned (TorchServe restarts it)


def split_request(row: Mapping[str, Any], headers: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """(image bytes, options) from one TorchServe request row; options come from X-Format-style headers
    (case-insensitive), overridden by form/query/gRPC fields. BadImageRequest names what is wrong."""
    lower = {k.lower(): v for k, v in headers.items() if isinstance(v, str)}  # non-str: per-field content types
    if lower.get("content-type", "").lower().startswith("application/x-www-form-urlencoded"):
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


class StylizeHandler(BaseHandler):
    """Style transfer with one exported generator (.pt TorchScript or .pt2 torch.export)."""

    # Nested: TorchServe takes the handler module's one top-level class as the handler.
    @dataclasses.dataclass
    class Request:
        """A decoded request on its way through the stages; `idx` is its place in TorchServe's batch."""
        idx: int
        image: DecodedImage
        options: Options
        stylized: torch.Tensor | None = None

    @dataclasses.dataclass
    class Batch:
        """One call's requests: a reply (image or JSON error) per request, the failed ones' statuses."""
        replies: list[bytes | None]
        failed: dict[int, int] = dataclasses.field(default_factory=dict)  # request index → status
        requests: list[StylizeHandler.Request] = dataclasses.field(default_factory=list)  # those decoded

    def initialize(self, context: Any) -> None:
        """Load the model named by the manifest's serializedFile, its metadata and the limits."""
        reuse_freed_memory()  # the worker process's entry point: allocator tuning (pipeline.common.memory)
        props = context.system_properties
        self.manifest = context.manifest
        gpu = props.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        serialized = self.manifest["model"].get("serializedFile")
        if not serialized:
            raise RuntimeError("the archive has no serialized model: re-archive the run with `make archive NAME=<run>` "
                               "(python -m pipeline archive), which packs runs/<run>/export/generator.pt2")
        self.model_pt_path = os.path.join(props.get("model_dir"), serialized)
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

    def describe_handle(self) -> str:
        """`GET /models/NAME?customized=true`: `model_description`, options, this worker's precision and threads."""
        return json.dumps({**model_description(self.metadata, self.controls), "options": list(OPTION_NAMES),
                           "precision": self.precision_note, "threads": self.threads})

    def preprocess(self, data: list[dict[str, Any]]) -> Batch:
        """Split and decode each request; a bad one gets its JSON error now and skips the later stages."""
        metrics = self.context.metrics  # calls pass a fresh dimensions list: TorchServe's default is a shared mutable one
        # how many requests TorchServe batched into this call (the archive's batchSize / maxBatchDelay)
        metrics.add_metric("BatchSize", len(data), "count", 0, [], MetricTypes.GAUGE)
        batch = self.Batch([None] * len(data))
        for idx, row in enumerate(data):
            start = time.perf_counter()
            try:
                payload, params = split_request(row, self.context.get_all_request_header(idx) or {})
                image, options = prepare(payload, params, self.max_side, self.max_pixels, self.controls)
            except BadImageRequest as e:
                self._fail(batch, idx, e.status, str(e))
                continue
            metrics.add_time("DecodeMs", _ms(start), idx, "ms", [])
            metrics.add_metric("Megapixels", image.size[0] * image.size[1] / 1e6, "MP", idx, [], MetricTypes.COUNTER)
            batch.requests.append(self.Request(idx, image, options))
        return batch

    def inference(self, batch: Batch) -> Batch:
        """One model call per image size (padding would change the instance-norm statistics); a group that
        fails fails its own requests only: 507 out of memory, else 500."""
        for group in size_groups([r.image for r in batch.requests]):
            requests = [batch.requests[i] for i in group]
            start = time.perf_counter()
            try:
                outputs = self._stylize_group(requests)
            except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
                size = requests[0].image.size
                logger.exception("inference failed for a group of %d image(s) of %s", len(requests), size)
                # out of memory is told by the exception's type, never its wording
                too_big = isinstance(e, (MemoryError, torch.OutOfMemoryError))
                status, message = (507, "image too large for this server's memory; send a smaller max_side") if too_big \
                    else (500, f"inference failed: {type(e).__name__}")
                for r in requests:
                    self._fail(batch, r.idx, status, message)
                continue
            self.context.metrics.add_time("ModelMs", _ms(start), requests[0].idx, "ms", [])
            for r, stylized in zip(requests, outputs):
                r.stylized = stylized
        return batch

    def postprocess(self, batch: Batch) -> list[bytes]:
        """Encode each stylized image in its request's format; its content type goes in the response."""
        for r in batch.requests:
            if r.stylized is None:  # its group failed
                continue
            start = time.perf_counter()
            try:
                batch.replies[r.idx], content_type = finish(r.stylized, r.image, r.options)
            except (OSError, ValueError) as e:  # e.g. WebP's 16383 px limit if max_side was raised past it
                self._fail(batch, r.idx, 500, f"encoding {r.options.format} failed: {e}")
                continue
            self.context.set_response_content_type(r.idx, content_type)
            self.context.metrics.add_time("EncodeMs", _ms(start), r.idx, "ms", [])
        self._raise_for_grpc(batch)
        return batch.replies  # type: ignore[return-value]

    def explain_handle(self, data_preprocess: Batch, raw_data: list[dict[str, Any]]) -> list[bytes]:
        """`/explanations/NAME` answers like /predictions: a batch may mix both kinds of request, and
        BaseHandler asks only the first which kind it is."""
        return self.postprocess(self.inference(data_preprocess))

    def _stylize_group(self, requests: list[Request]) -> list[torch.Tensor]:
        """run_batch on one size group; out of memory: free the device's cache and retry once in tiles
        (bounded memory, the same pixels). A CUDA error that poisons the context ends the process."""
        images, conditions = [r.image for r in requests], [r.options.conditioning for r in requests]
        try:
            try:
                return run_batch(self.model, images, self.device, self.max_memory_mb, conditions, self.precision)
            except (MemoryError, torch.OutOfMemoryError):
                logger.warning("out of memory on %d image(s) of %s; retrying in tiles", len(images), images[0].size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                return run_batch(self.model, images, self.device, self.max_memory_mb, conditions, self.precision,
                                 tiled=True)
        except torch.AcceleratorError as e:  # torch's type for CUDA runtime errors (out of memory is not one)
            # 'an illegal memory access', 'device-side assert triggered', ...: the context is unusable.
            logger.critical("CUDA context poisoned (%s): ending the worker so TorchServe restarts it", e)
            # SystemExit passes TorchServe's `except Exception` in the worker: the process exits and
            # the frontend fails this batch and starts a fresh worker.
            sys.exit(WORKER_RESTART_EXIT)

    def _raise_for_grpc(self, batch: Batch) -> None:
        """A failed gRPC request alone in its batch fails as a gRPC error status.

        TorchServe's gRPC path ignores the per-request status `_fail` sets (GRPCJob.response sends any
        body as an OK prediction); only a failed *batch* becomes a gRPC status, and it fails every request
        of the batch. So it is raised only when the batch is this one request (docs/serving.md, gRPC).
        gRPC requests carry only per-field content types (dicts) as headers, HTTP ones always string headers."""
        if len(batch.replies) != 1 or not batch.failed.get(0):
            return
        if not any(isinstance(v, str) for v in (self.context.get_all_request_header(0) or {}).values()):
            raise PredictionException(batch.replies[0].decode("utf-8"), batch.failed[0])

    def _fail(self, batch: Batch, idx: int, status: int, message: str) -> None:
        """Mark one request as failed: status line, JSON body, a BadRequests count for 4xx."""
        logger.info("request %d refused with %d: %s", idx, status, message)
        batch.failed[idx] = status
        batch.replies[idx] = json.dumps({"error": message, "status": status,
                                         "styles": list(self.controls.styles)}).encode("utf-8")
        self.context.set_response_status(status, HTTPStatus(status).phrase, idx)
        self.context.set_response_content_type(idx, "application/json")
        if status < 500:
            self.context.metrics.add_counter("BadRequests", 1, idx, [])


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)
