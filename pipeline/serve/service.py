"""One served model and how a batch of requests through it is answered, for any server: the TorchServe
handler (handlers/stylize_handler.py) and the Ray Serve deployment (handlers/ray_serve.py) are thin
adapters over `StyleService` and `Batch`, so both give the same bytes, statuses and errors.

A batch goes decode (each request alone: a bad one gets its 4xx JSON error now) → infer (one model call
per image size; a group that fails fails only its requests: 507 out of memory, else 500) → encode.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from pipeline.common.image_codec import BadImageRequest, DecodedImage
from pipeline.serve.controls import ModelControls, call_model, model_description
from pipeline.serve.inference import finish, prepare, run_batch, size_groups
from pipeline.serve.limits import ENV_MAX_MEMORY, device_memory_cap_mb, memory_cap_bytes, server_limits
from pipeline.serve.model_io import load_model
from pipeline.serve.precision import DEFAULT_PRECISION, ENV_PRECISION, precision_mode, resolve_precision
from pipeline.serve.options import Options
from pipeline.serve.requests import OPTION_NAMES, split_request

logger = logging.getLogger(__name__)

WORKER_RESTART_EXIT = 75  # exit status of a worker whose CUDA context is poisoned (its server starts a fresh one)


@dataclasses.dataclass
class Request:
    """A decoded request on its way through the stages; `idx` is its place in the batch."""
    idx: int
    image: DecodedImage
    options: Options
    stylized: torch.Tensor | None = None


@dataclasses.dataclass
class Batch:
    """One call's requests: a reply (image or JSON error), status and content type per request, and the
    timings a server may record as metrics: (name, request index, value)."""
    replies: list[bytes | None]
    statuses: list[int]
    content_types: list[str]
    requests: list[Request] = dataclasses.field(default_factory=list)  # those decoded
    metrics: list[tuple[str, int, float]] = dataclasses.field(default_factory=list)

    @classmethod
    def of_size(cls, n: int) -> "Batch":
        return cls([None] * n, [200] * n, ["application/json"] * n)


class StyleService:
    """An exported generator loaded for serving, with its limits, precision and threads.

    `config`: the `handler:` settings (max_side, max_pixels, max_memory_mb, precision); the environment
    ($INSTYLE_*) overrides them (pipeline.serve.limits). `threads`: torch threads on a CPU (None: leave
    the process's). `workers_on_device`: how many servers share a GPU (its free memory is split among them)."""

    def __init__(self, model_path: str | Path, device: torch.device, config: Mapping[str, Any] | None = None,
                 threads: int | None = None, workers_on_device: int = 1):
        config = config or {}
        self.device = device
        self.model, self.metadata = load_model(model_path, device)
        self.controls: ModelControls = self.model.instyle_controls
        self.max_side, self.max_pixels = server_limits(config)
        self.threads = torch.get_num_threads()
        if device.type == "cpu" and threads is not None:  # workers × threads = cores (limits.cpu_threads)
            self.threads = threads
            torch.set_num_threads(threads)
        requested = os.environ.get(ENV_PRECISION) or config.get("precision") or DEFAULT_PRECISION  # env first
        self.precision = resolve_precision(requested, device, self.model)
        self.precision_note = f"{self.precision} (auto)" if requested == "auto" else self.precision
        with torch.inference_mode(), precision_mode(device, self.precision):  # warm-up: fail at load, not later
            for _ in range(2):
                call_model(self.model, torch.rand(1, 3, 32, 32, device=device), None, self.controls)
        # over this many MB of activations an image is stylized in tiles (whole-image norm statistics)
        explicit = os.environ.get(ENV_MAX_MEMORY) or config.get("max_memory_mb") not in (None, "")
        if explicit or device.type != "cuda":
            self.max_memory_mb = memory_cap_bytes(config=config) // 2**20
        else:  # this worker's share of the device's free memory once the model is loaded
            self.max_memory_mb = device_memory_cap_mb(torch.cuda.mem_get_info(device)[0], workers_on_device)
        logger.info("instyle model %s loaded on %s in %s (%s, step %s); max_side=%d max_pixels=%d max_memory_mb=%d "
                    "threads=%d", Path(model_path).name, device, self.precision_note, self.controls.describe(),
                    self.metadata.get("global_step"), self.max_side, self.max_pixels, self.max_memory_mb, self.threads)

    def describe(self) -> dict[str, Any]:
        """The model (`model_description`), the request options, this worker's precision and threads."""
        return {**model_description(self.metadata, self.controls), "options": list(OPTION_NAMES),
                "precision": self.precision_note, "threads": self.threads}

    def answer(self, rows: list[Mapping[str, Any]], headers: list[Mapping[str, Any]]) -> Batch:
        """Every stage for a batch of request rows (pipeline.serve.requests) and their headers."""
        batch = Batch.of_size(len(rows))
        for idx, (row, hdrs) in enumerate(zip(rows, headers)):
            self.decode(batch, idx, row, hdrs)
        self.infer(batch)
        self.encode(batch)
        return batch

    def decode(self, batch: Batch, idx: int, row: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        """Split and decode one request; a bad one gets its JSON error now and skips the later stages."""
        start = time.perf_counter()
        try:
            payload, params = split_request(row, headers)
            image, options = prepare(payload, params, self.max_side, self.max_pixels, self.controls)
        except BadImageRequest as e:
            self.fail(batch, idx, e.status, str(e))
            return
        batch.metrics += [("DecodeMs", idx, _ms(start)), ("Megapixels", idx, image.size[0] * image.size[1] / 1e6)]
        batch.requests.append(Request(idx, image, options))

    def infer(self, batch: Batch) -> None:
        """One model call per image size (padding would change the instance-norm statistics)."""
        for group in size_groups([r.image for r in batch.requests]):
            requests = [batch.requests[i] for i in group]
            start = time.perf_counter()
            try:
                outputs = self._stylize_group(requests)
            except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
                logger.exception("inference failed for a group of %d image(s) of %s", len(requests), requests[0].image.size)
                # out of memory is told by the exception's type, never its wording
                too_big = isinstance(e, (MemoryError, torch.OutOfMemoryError))
                status, message = (507, "image too large for this server's memory; send a smaller max_side") if too_big \
                    else (500, f"inference failed: {type(e).__name__}")
                for r in requests:
                    self.fail(batch, r.idx, status, message)
                continue
            batch.metrics.append(("ModelMs", requests[0].idx, _ms(start)))
            for r, stylized in zip(requests, outputs):
                r.stylized = stylized

    def encode(self, batch: Batch) -> None:
        """Encode each stylized image in its request's format, with its content type."""
        for r in batch.requests:
            if r.stylized is None:  # its group failed
                continue
            start = time.perf_counter()
            try:
                batch.replies[r.idx], batch.content_types[r.idx] = finish(r.stylized, r.image, r.options)
            except (OSError, ValueError) as e:  # e.g. WebP's 16383 px limit if max_side was raised past it
                self.fail(batch, r.idx, 500, f"encoding {r.options.format} failed: {e}")
                continue
            batch.metrics.append(("EncodeMs", r.idx, _ms(start)))

    def fail(self, batch: Batch, idx: int, status: int, message: str) -> None:
        """Mark one request as failed: its status and a JSON body naming the problem and the model's styles."""
        logger.info("request %d refused with %d: %s", idx, status, message)
        batch.statuses[idx], batch.content_types[idx] = status, "application/json"
        batch.replies[idx] = error_body(status, message, self.controls.styles)

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
            logger.critical("CUDA context poisoned (%s): ending the worker so its server restarts it", e)
            # SystemExit passes the servers' `except Exception`: the process exits, the server fails this
            # batch and starts a fresh worker (TorchServe) or replica (Ray Serve).
            sys.exit(WORKER_RESTART_EXIT)


def error_body(status: int, message: str, styles: tuple[str, ...] | list[str]) -> bytes:
    """The JSON of a refused request: what is wrong, the status, the styles the model offers."""
    return json.dumps({"error": message, "status": status, "styles": list(styles)}).encode("utf-8")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)
