"""Ray Serve deployment of the serving core: the same HTTP API, answers and errors as the TorchServe
handler, on as many machines as the Ray cluster has (docs/scale.md, Serving on many machines).

Two deployments, both thin adapters over pipeline.serve:
- `Gateway` (the HTTP ingress): token check, TorchServe's routes (`POST /predictions/<name>`,
  `/invocations?model_name=`, `GET /ping`, `GET /models/<name>`), the request row as TorchServe's worker
  would get it (pipeline.serve.requests), and one retry on another replica when a replica or its node
  is lost mid-request (stylizing is idempotent), so a dying node costs latency, not answers.
- `Stylizer` (the models, autoscaled): every served model as a `StyleService`; requests arriving together
  are batched (`@serve.batch`) and answered by `StyleService.answer`: one model call per model and size.

`build` is the application builder that ray_serve.yaml names (`import_path: handlers.ray_serve:build`);
`python -m pipeline ray-serve` (pipeline/ops/ray_serve_local.py) deploys it with `serve deploy`.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

import ray
import torch
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import Response

from pipeline.common.memory import reuse_freed_memory
from pipeline.serve.requests import field_value
from pipeline.serve.service import StyleService

logger = logging.getLogger("ray.serve")

LOST_REPLICA_RETRIES = 2  # tries on other replicas when the one holding a request dies with its node
TOKEN_ERROR = {"code": 400, "type": "InvalidKeyException",
               "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}


@serve.deployment(name="Stylizer")
class Stylizer:
    """Every served model, loaded once per replica; torch threads = the CPUs Ray gave the replica."""

    def __init__(self, models: dict[str, str], handler: dict[str, Any] | None = None,
                 max_batch_size: int = 4, batch_wait_ms: int = 20):
        reuse_freed_memory()
        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU") or []
        device = torch.device("cuda:0" if gpus and torch.cuda.is_available() else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
        assigned = context.get_assigned_resources()
        cpus, share = assigned.get("CPU", 0), assigned.get("GPU", 1.0) or 1.0
        self.services = {name: StyleService(path, device, handler or {}, threads=max(1, int(cpus)),
                                            workers_on_device=max(1, round(1 / share)))
                         for name, path in models.items()}
        self.answer.set_max_batch_size(max_batch_size)
        self.answer.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        self.node = context.get_node_id()

    def describe(self, name: str) -> dict[str, Any]:
        return {**self.services[name].describe(), "node": self.node}

    @serve.batch
    async def answer(self, requests: list[tuple[str, dict[str, Any], dict[str, str]]]) -> list[tuple[int, str, bytes]]:
        """(model, row, headers) → (status, content type, body) each; one `StyleService.answer` per model.
        The work runs in a thread so that the replica keeps taking requests into the next batch."""
        return await asyncio.to_thread(self._answer, requests)

    def _answer(self, requests: list[tuple[str, dict[str, Any], dict[str, str]]]) -> list[tuple[int, str, bytes]]:
        out: list[Any] = [None] * len(requests)
        for name in dict.fromkeys(r[0] for r in requests):
            picked = [i for i, r in enumerate(requests) if r[0] == name]
            batch = self.services[name].answer([requests[i][1] for i in picked], [requests[i][2] for i in picked])
            for j, i in enumerate(picked):
                out[i] = (batch.statuses[j], batch.content_types[j], batch.replies[j])
        return out


@serve.deployment(name="Gateway")
class Gateway:
    """TorchServe's inference and describe routes on one port, behind its token check."""

    def __init__(self, stylizer: Any, models: list[str], token_sha256: dict[str, str]):
        self.stylizer, self.models = stylizer, list(models)
        self.digests = {kind: bytes.fromhex(d) for kind, d in token_sha256.items()}

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if path == "/ping" and request.method == "GET":
            return _json(200, {"status": "Healthy"})
        parts = path.strip("/").split("/")
        if parts[0] == "models" and len(parts) == 2 and request.method == "GET":
            if not self._authorized(request, "management"):
                return _json(400, TOKEN_ERROR)
            return await self._describe(parts[1])
        inference = parts[0] in ("predictions", "explanations") and len(parts) in (2, 3) or path == "/invocations"
        if inference and request.method not in ("POST", "PUT"):
            return _json(405, {"code": 405, "type": "MethodNotAllowedException",
                               "message": "Requested method is not allowed, please refer to API document."})
        if inference:
            if not self._authorized(request, "inference"):
                return _json(400, TOKEN_ERROR)
            name = parts[1] if parts[0] != "invocations" else request.query_params.get("model_name", "")
            if name not in self.models:
                return _json(404, {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {name}"})
            return await self._predict(name, request)
        return _json(404, {"code": 404, "type": "ResourceNotFoundException",
                           "message": "Requested resource is not found, please refer to API document."})

    def _authorized(self, request: Request, kind: str) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(token.strip().encode()).digest()
        return scheme.lower() == "bearer" and hmac.compare_digest(digest, self.digests[kind])

    async def _predict(self, name: str, request: Request) -> Response:
        row, headers = await request_row(request)
        for attempt in range(LOST_REPLICA_RETRIES + 1):
            try:
                status, content_type, body = await self.stylizer.answer.remote((name, row, headers))
                return Response(body, status_code=status, media_type=content_type)
            except BackPressureError:  # every replica's queue is full (max_queued_requests)
                return _json(503, {"code": 503, "type": "ServiceUnavailableException",
                                   "message": f"Model \"{name}\" has no worker to serve inference request: "
                                              "all replicas are busy and their queues full; retry later"})
            except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
                logger.warning("a Stylizer replica was lost mid-request (%s); try %d", type(e).__name__, attempt + 1)
        return _json(503, {"code": 503, "type": "ServiceUnavailableException",
                           "message": f"the replicas serving \"{name}\" were lost mid-request; retry"})

    async def _describe(self, name: str) -> Response:
        if name not in self.models:
            return _json(404, {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {name}"})
        described = await self.stylizer.describe.remote(name)
        # the shape of TorchServe's answer, whose JSON writer (Gson) leaves out null values
        return _json(200, [{"modelName": name, "engine": "ray", "customizedMetadata": _without_nulls(described)}])


async def request_row(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
    """The row TorchServe's worker would get for this HTTP request (query parameters, then each multipart
    field under its name, else the body as `body`) and the headers."""
    row: dict[str, Any] = {k: v.encode() for k, v in request.query_params.items()}
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        async with request.form(max_part_size=2**31) as form:
            for key, value in form.multi_items():
                if isinstance(value, str):
                    row[key] = value.encode()
                else:
                    row[key] = field_value(value.content_type or "", await value.read())
    else:
        body = await request.body()
        if body or not row:
            row["body"] = field_value(content_type, body)
    return row, dict(request.headers)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return [_without_nulls(v) for v in value] if isinstance(value, list) else value


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def build(args: dict[str, Any]) -> Any:
    """The application: `args` as ray_serve.yaml gives them (models: name → exported file; token_sha256:
    {inference, management} digests of the keys; handler: the limits; max_batch_size, batch_wait_ms)."""
    models = {str(k): str(v) for k, v in (args.get("models") or {}).items()}
    if not models:
        raise ValueError("ray_serve.yaml's args name no models: give `models: {name: runs/<run>/export/generator.pt2}`")
    missing = [f"{k}: {v}" for k, v in models.items() if not os.path.isabs(v) and not Path(v).exists()]
    if missing:  # relative paths are read on each replica's node; absolute ones may exist only there
        raise FileNotFoundError(f"exported models not found: {', '.join(missing)} (make export NAME=<run>)")
    digests = args.get("token_sha256") or {}
    if not {"inference", "management"} <= set(digests):
        raise ValueError("token auth is on: args need token_sha256 {inference, management} "
                         "(python -m pipeline ray-serve writes them with the keys in key_file.json)")
    stylizer = Stylizer.bind(models, args.get("handler") or {}, int(args.get("max_batch_size", 4)),
                             int(args.get("batch_wait_ms", 20)))
    return Gateway.bind(stylizer, list(models), {k: str(digests[k]) for k in ("inference", "management")})
