"""Serving benchmark: the real handler in a private TorchServe on loopback, 512² JPEG requests.

Two archives of the same export share one server: `plain` (batchSize 1, the default) and
`batched` (batchSize 4, maxBatchDelay 100 ms). For each, at concurrency 1, 4 and 8, clients
send the same photo as fast as they get answers; requests/s, p50/p99 latency and errors are
reported, and requests/s is compared with the model-only images/s of the same .pt2 file.
"""
from __future__ import annotations

import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.common import photo_jpeg

MODELS = {"plain": {"batch_size": 1}, "batched": {"batch_size": 4, "max_batch_delay_ms": 100}}
SIZE = 512


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size of a process (VmHWM in /proc/PID/status), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def request_1080p(server: Any, model: str) -> dict[str, Any]:
    """One 1920×1080 JPEG request: seconds, and the worker's peak RSS before and after it
    (the worker has only served 512² images before, so the growth is the 1080p request's)."""
    pids = [w["pid"] for w in server.workers(model) if w.get("pid")]
    before = {pid: vm_hwm_mb(pid) for pid in pids}
    start = time.perf_counter()
    status, ctype, data = server.request("POST", f"/predictions/{model}", photo_jpeg(1080, 1920),
                                         {"Content-Type": "image/jpeg"})
    seconds = time.perf_counter() - start
    size = Image.open(io.BytesIO(data)).size if status == 200 else None
    return {"model": model, "status": status, "content_type": ctype, "size": size, "seconds": seconds,
            "worker_peak_rss_mb_before": before, "worker_peak_rss_mb": {pid: vm_hwm_mb(pid) for pid in pids}}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def load(server: Any, model: str, body: bytes, concurrency: int, total: int) -> dict[str, Any]:
    """`total` requests from `concurrency` clients that each send the next one on an answer."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))

    def client() -> None:
        for _ in counter:  # the shared iterator hands out request slots until `total` is reached
            start = time.perf_counter()
            try:
                status, ctype, data = server.request("POST", f"/predictions/{model}", body,
                                                     {"Content-Type": "image/jpeg"})
            except OSError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - start)
            if status != 200 or ctype != "image/png":
                errors.append(f"HTTP {status} {ctype} {data[:120]!r}")

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    return {"model": model, "concurrency": concurrency, "requests": total, "errors": len(errors),
            "error_samples": errors[:3], "requests_per_s": total / wall, "wall_s": wall,
            "p50_s": statistics.median(latencies) if latencies else None,
            "p99_s": percentile(latencies, 99) if latencies else None}


def bench_serving(run: Path, work: Path, concurrencies: tuple[int, ...] = (1, 4, 8), per_client: int = 3,
                  min_requests: int = 8) -> dict[str, Any]:
    """Archive, start, wait, measure, stop. Returns the rows plus server start-up facts."""
    from pipeline.export.archive import archive_run
    from pipeline.ops.torchserve_local import LocalTorchServe
    from pipeline.serve.precision import resolve_precision

    store = work / "model_store"
    for name, opts in MODELS.items():
        archive_run(run, store, name=name, **opts)
    body = photo_jpeg(SIZE, SIZE)
    server = LocalTorchServe(work / "torchserve", store)
    rows = []
    with server:
        ready_s = server.wait_ready(list(MODELS), timeout=240)
        check = server.request("POST", "/predictions/plain", body, {"Content-Type": "image/jpeg"})
        if check[0] != 200 or Image.open(io.BytesIO(check[2])).size != (SIZE, SIZE):
            raise RuntimeError(f"serving check failed: HTTP {check[0]} {check[2][:200]!r}\n{server.logs()}")
        for name in MODELS:
            for _ in range(2):  # warm-up of this model's worker at this size
                server.request("POST", f"/predictions/{name}", body, {"Content-Type": "image/jpeg"})
            for conc in concurrencies:
                rows.append(load(server, name, body, conc, max(min_requests, conc * per_client)))
        big = request_1080p(server, "plain")
    # what the workers run: the archives' `precision: auto`, resolved as the handler does on this CPU
    return {"ready_s": ready_s, "request_bytes": len(body), "rows": rows, "request_1080p": big,
            "precision": resolve_precision("auto", "cpu")}
