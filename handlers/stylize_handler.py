"""TorchServe handler: image bytes in, the stylized image out. Requests, options, limits, errors, GPU
workers and metrics: docs/serving.md.

A thin adapter over pipeline.serve.service (the Ray Serve deployment, handlers/ray_serve.py, is the
other): TorchServe's BaseHandler.handle drives preprocess (decode) → inference (one model call per image
size) → postprocess (encode) and records `HandlerTime`; this file maps TorchServe's context (model files,
model-config.yaml, headers, statuses, metrics) onto the service. Each request of a batch is answered on
its own: a bad one gets its own 4xx JSON error (500/507 when its size group fails) while the others carry on.

The archive (pipeline.export.archive) carries pipeline.serve, .model and .common next to this file, first
on the worker's PYTHONPATH: the worker runs the code that was archived.
"""
from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from typing import Any

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from pipeline.common.memory import reuse_freed_memory
from pipeline.serve.limits import cpu_threads, workers_per_device
from pipeline.serve.requests import split_request  # noqa: F401 (the handler's request rules, tested here)
from pipeline.serve.service import WORKER_RESTART_EXIT, Batch, StyleService  # noqa: F401

logger = logging.getLogger(__name__)


class StylizeHandler(BaseHandler):
    """Style transfer with one exported generator (.pt TorchScript or .pt2 torch.export)."""

    def initialize(self, context: Any) -> None:
        """Load the model named by the manifest's serializedFile with the archive's `handler:` settings."""
        reuse_freed_memory()  # the worker process's entry point: allocator tuning (pipeline.common.memory)
        props = context.system_properties
        self.manifest = context.manifest
        gpu = props.get("gpu_id")
        device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        serialized = self.manifest["model"].get("serializedFile")
        if not serialized:
            raise RuntimeError("the archive has no serialized model: re-archive the run with `make archive NAME=<run>` "
                               "(python -m pipeline archive), which packs runs/<run>/export/generator.pt2")
        self.model_pt_path = os.path.join(props.get("model_dir"), serialized)
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.service = StyleService(
            self.model_pt_path, device, yaml_config.get("handler") or {},
            threads=cpu_threads(yaml_config) if device.type == "cpu" else None,  # workers × threads = cores
            workers_on_device=workers_per_device(yaml_config, torch.cuda.device_count()) if device.type == "cuda" else 1)
        self.initialized = True

    def describe_handle(self) -> str:
        """`GET /models/NAME?customized=true`: the service's description."""
        return json.dumps(self.service.describe())

    def preprocess(self, data: list[dict[str, Any]]) -> Batch:
        """Split and decode each request (headers from TorchServe's context)."""
        # how many requests TorchServe batched into this call (the archive's batchSize / maxBatchDelay);
        # calls pass a fresh dimensions list: TorchServe's default is a shared mutable one
        self.context.metrics.add_metric("BatchSize", len(data), "count", 0, [], MetricTypes.GAUGE)
        batch = Batch.of_size(len(data))
        for idx, row in enumerate(data):
            self.service.decode(batch, idx, row, self.context.get_all_request_header(idx) or {})
        return batch

    def inference(self, batch: Batch) -> Batch:
        self.service.infer(batch)
        return batch

    def postprocess(self, batch: Batch) -> list[bytes]:
        """Encode; each request's status, content type and metrics go to TorchServe's context."""
        self.service.encode(batch)
        metrics = self.context.metrics
        for name, idx, value in batch.metrics:
            if name == "Megapixels":
                metrics.add_metric(name, value, "MP", idx, [], MetricTypes.COUNTER)
            else:
                metrics.add_time(name, value, idx, "ms", [])
        for idx, status in enumerate(batch.statuses):
            self.context.set_response_content_type(idx, batch.content_types[idx])
            if status != 200:
                self.context.set_response_status(status, HTTPStatus(status).phrase, idx)
                if status < 500:
                    metrics.add_counter("BadRequests", 1, idx, [])
        self._raise_for_grpc(batch)
        return batch.replies  # type: ignore[return-value]

    def explain_handle(self, data_preprocess: Batch, raw_data: list[dict[str, Any]]) -> list[bytes]:
        """`/explanations/NAME` answers like /predictions: a batch may mix both kinds of request, and
        BaseHandler asks only the first which kind it is."""
        return self.postprocess(self.inference(data_preprocess))

    def _raise_for_grpc(self, batch: Batch) -> None:
        """A failed gRPC request alone in its batch fails as a gRPC error status.

        TorchServe's gRPC path ignores the per-request status (GRPCJob.response sends any body as an OK
        prediction); only a failed *batch* becomes a gRPC status, and it fails every request of the
        batch. So it is raised only when the batch is this one request (docs/serving.md, gRPC).
        gRPC requests carry only per-field content types (dicts) as headers, HTTP ones always string headers."""
        if len(batch.replies) != 1 or batch.statuses[0] == 200:
            return
        if not any(isinstance(v, str) for v in (self.context.get_all_request_header(0) or {}).values()):
            raise PredictionException(batch.replies[0].decode("utf-8"), batch.statuses[0])
