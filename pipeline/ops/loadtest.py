"""`make loadtest`: N concurrent clients × M requests of mixed sizes against one model served by a
private TorchServe on loopback (the repo's config.properties, free ports), every response checked.

A response counts as good only if it is HTTP 200, a PNG that decodes, of the request's size, and
byte-identical to the first response for the same input (the model is deterministic, so a
mixed-up or truncated response is caught). Bounded: at most N×M requests and `--max_seconds`.

    python -m pipeline loadtest --model starry_night --clients 8 --requests 200
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from pipeline.ops.torchserve_api import exchange
from pipeline.ops.torchserve_local import LocalTorchServe

SIZES = [(64, 64), (96, 128), (200, 256), (256, 384)]  # (h, w): a mix of thumbnails and small photos
VARIANTS = 4  # distinct images per size, so a response swapped between clients is detected


def make_inputs(seed: int = 0) -> list[tuple[bytes, tuple[int, int]]]:
    """JPEG request bodies of mixed sizes, with their (width, height)."""
    rng = np.random.default_rng(seed)
    inputs = []
    for h, w in SIZES:
        for _ in range(VARIANTS):
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200 + rng.normal(0, 20, (h, w, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
            inputs.append((buf.getvalue(), (w, h)))
    return inputs


class Client:
    """One keep-alive connection; `post` returns (status, body, seconds)."""

    def __init__(self, port: int, token: str):
        self.port, self.token, self.conn = port, token, None

    def post(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        for attempt in (0, 1):  # one reconnect if the server closed an idle keep-alive connection
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                status, _, answer = exchange(self.conn, "POST", path, body, {"Content-Type": "image/jpeg"}, self.token)
                return status, answer, time.perf_counter() - start
            except (ConnectionError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def run_load(server: LocalTorchServe | Any, model: str, clients: int, requests: int, max_seconds: float,
             progress: Callable[[int], None] | None = None) -> dict:
    """`clients` × `requests` against `server` (its `inference` port and `keys`); `progress(answered so far)`
    after every answer (e.g. to kill a node mid-load). `statuses` counts the HTTP statuses, `exceptions`
    the requests that got no HTTP answer at all (a dropped connection, a timeout)."""
    inputs = make_inputs()
    reference: dict[int, str] = {}
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    statuses: Counter[int] = Counter()
    answers = [0]
    deadline = time.monotonic() + max_seconds

    def client_loop(cid: int) -> int:
        client, done = Client(server.inference, server.keys["inference"]), 0
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            k = (cid * 7 + i) % len(inputs)
            body, size = inputs[k]
            try:
                status, out, seconds = client.post(f"/predictions/{model}", body)
            except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the run
                with lock:
                    errors.append(f"client {cid} request {i}: {type(e).__name__}: {e}")
                    statuses[0] += 1  # 0: no HTTP answer
                continue
            problem = check(status, out, size)
            digest = hashlib.sha256(out).hexdigest()
            with lock:
                statuses[status] += 1
                answers[0] += 1
                if progress is not None:
                    progress(answers[0])
                if problem is None and reference.setdefault(k, digest) != digest:
                    problem = "response differs from the first response to the same image"
                if problem:
                    errors.append(f"client {cid} request {i}: {problem}")
                else:
                    latencies.append(seconds)
            done += 1
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answered = sum(pool.map(client_loop, range(clients)))
    wall = time.perf_counter() - start
    sent = clients * requests
    lat = sorted(latencies)
    return {
        "model": model, "clients": clients, "requests_per_client": requests, "planned": sent,
        "answered": answered, "good": len(lat), "errors": len(errors), "lost": sent - answered,
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "exceptions": statuses[0],
        "first_errors": errors[:10], "wall_s": round(wall, 2), "requests_per_s": round(len(lat) / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
        "sizes_hw": SIZES, "machine": machine(),
    }


def machine() -> str:
    """CPU model and core count, e.g. 'AMD EPYC 9R14, 2 cores'."""
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def check(status: int, body: bytes, size: tuple[int, int]) -> str | None:
    """None if `body` is a good stylized PNG of `size`, else what is wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        im = Image.open(io.BytesIO(body))
        im.load()
    except Exception as e:  # noqa: BLE001
        return f"response is not a valid image: {e}"
    if im.format != "PNG" or im.size != size:
        return f"got {im.format} {im.size}, expected PNG {size}"
    return None


def command(*, model: str | None = None, store: Path = Path("model_store"), clients: int = 8, requests: int = 200,
            max_seconds: float = 1200, out: Path | None = None, engine: str = "torchserve", runs: Path = Path("runs"),
            nodes: int = 2, node_cpus: int = 2, min_replicas: int = 1, kill_node_after: int | None = None) -> int:
    """N concurrent clients × M requests of mixed sizes against a private loopback server, every response checked.

    Exit code 0 only if every request got a good answer.

    Args:
        model: model name: STORE/NAME.mar, or RUNS/NAME/export/generator.pt2 with engine ray (default: the only one).
        store: model store folder (TorchServe).
        clients: concurrent clients.
        requests: requests per client.
        max_seconds: stop sending after this long (the rest counts as lost).
        out: write the results as JSON here.
        engine: torchserve, or ray: a private Ray cluster on this machine, a head and NODES worker nodes
            (pipeline/ops/loadtest_ray.py: replicas counted, a node killed with --kill_node_after).
        runs: folder of the exported runs (ray).
        nodes: worker nodes (ray; 0: the head alone runs the replicas, as `make serve ENGINE=ray`).
        node_cpus: logical CPUs of each node that runs replicas, one replica each (ray).
        min_replicas: the fewest replicas the autoscaler keeps (ray; 2: one on each node from the start).
        kill_node_after: kill the worker node holding the most replicas once this many requests were answered (ray).
    """
    if clients < 1 or requests < 1:
        print("error: --clients and --requests must be ≥ 1", file=sys.stderr)
        return 2
    if engine not in ("torchserve", "ray"):
        print(f"error: --engine {engine!r}: use torchserve or ray", file=sys.stderr)
        return 2
    result = (_on_ray(model, runs, clients, requests, max_seconds, nodes, node_cpus, min_replicas, kill_node_after)
              if engine == "ray" else _on_torchserve(model, store, clients, requests, max_seconds))
    if result is None:  # the reason is printed
        return 2
    shown = {k: v for k, v in result.items() if k not in ("first_errors", "replicas_timeline")}
    print(json.dumps(shown, indent=1))
    for line in result["first_errors"]:
        print("ERROR", line, file=sys.stderr)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["errors"] == 0 and result["lost"] == 0 else 1


def _on_torchserve(model: str | None, store: Path, clients: int, requests: int, max_seconds: float) -> dict | None:
    names = [m.stem for m in sorted(store.glob("*.mar"))]
    chosen = model or (names[0] if len(names) == 1 else None)
    if chosen not in names:
        print(f"error: no model {model or ''} to load-test in {store}/ (found: {', '.join(names) or 'none'}); "
              "build one with `make export NAME=<run>` and `make archive NAME=<run>`", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(prefix="instyle-loadtest-") as tmp:
        private = Path(tmp) / "store"
        private.mkdir()
        (private / f"{chosen}.mar").symlink_to((store / f"{chosen}.mar").resolve())
        with LocalTorchServe(Path(tmp) / "server", private) as server:
            ready = server.wait_ready([chosen])
            print(f"TorchServe ready in {ready:.1f} s on 127.0.0.1:{server.inference}; "
                  f"{clients} clients × {requests} requests...", flush=True)
            return run_load(server, chosen, clients, requests, max_seconds)


def _on_ray(model: str | None, runs: Path, clients: int, requests: int, max_seconds: float, nodes: int, node_cpus: int,
            min_replicas: int, kill_node_after: int | None) -> dict | None:
    from pipeline.ops import loadtest_ray  # Ray is the `serve` extra's
    from pipeline.ops.ray_serve_local import exported_models

    try:
        found = exported_models(runs, [model] if model else None)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    if len(found) != 1:
        print(f"error: several exported runs in {runs}/ ({', '.join(found)}): name one with --model (NAME=)", file=sys.stderr)
        return None
    (name, path), = found.items()
    try:
        return loadtest_ray.run(name, Path(path), clients=clients, requests=requests, max_seconds=max_seconds,
                                nodes=nodes, node_cpus=node_cpus, min_replicas=min_replicas, kill_node_after=kill_node_after)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
