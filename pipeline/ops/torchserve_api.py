"""Talking to a running TorchServe over HTTP: one request, its keys and the wait until it serves.

`request` (or `exchange` on a kept-alive connection), `read_keys` (the key_file.json TorchServe writes
at start-up, token auth on) and `wait_ready`: used by `make demo`, the private server of the tests and
benchmarks (`torchserve_local`), the load test and the gRPC client.
"""
from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Callable, Mapping

Address = tuple[str, int]  # (host, port) of one of TorchServe's listeners
Response = tuple[int, str, bytes]  # (status, content type, body)


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
             headers: Mapping[str, str] | None = None, token: str | None = None) -> Response:
    """One request on `conn` (kept open); `token` is sent as `Authorization: Bearer`."""
    conn.request(method, path, body=body, headers={**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})})
    resp = conn.getresponse()
    return resp.status, resp.getheader("Content-Type", ""), resp.read()


def request(address: Address, method: str, path: str, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, token: str | None = None, timeout: float = 300) -> Response:
    """One request on a connection of its own. OSError (e.g. ConnectionRefusedError) or
    http.client.HTTPException when nothing answers."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        return exchange(conn, method, path, body, headers, token)
    finally:
        conn.close()


def read_keys(key_file: Path) -> dict[str, str]:
    """name → key of TorchServe's key_file.json (`inference`, `management`, `API`). The file's own
    errors propagate: FileNotFoundError, json's ValueError, KeyError/TypeError for another layout."""
    return {name: entry["key"] for name, entry in json.loads(Path(key_file).read_text()).items()}


def wait_ready(key_file: Path, inference: Address, management: Address, models: list[str], timeout: float,
               exclude_pids: frozenset[int] | set[int] = frozenset(),
               alive: Callable[[], None] | None = None) -> tuple[dict[str, str], float]:
    """(keys, seconds) once the key file has both keys, /ping answers 200 with the inference key and
    every model has a READY worker (whose pid is not in `exclude_pids`: a restarted worker), polling
    4 times a second. What is not there yet (no key file, a half-written one, a listener not bound
    yet, a worker loading) is waited for; a model the server does not have (404) is a RuntimeError
    at once, so is whatever `alive()` raises (a server process that exited); TimeoutError names the
    last thing missing."""
    start, last = time.monotonic(), f"no {Path(key_file).name} yet"
    while time.monotonic() - start < timeout:
        if alive is not None:
            alive()
        try:
            keys = read_keys(key_file)
            if not {"inference", "management"} <= keys.keys():
                raise KeyError(f"{Path(key_file).name} has no inference or management key")
            status, _, body = request(inference, "GET", "/ping", token=keys["inference"], timeout=10)
            last = f"GET /ping: {status} {body[:200]!r}"
            pending = [m for m in models if status != 200 or not _has_ready_worker(management, keys, m, exclude_pids)]
            if not pending:
                return keys, time.monotonic() - start
            last = f"no READY worker of {', '.join(pending)}" if status == 200 else last
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.25)
    raise TimeoutError(f"TorchServe not ready in time ({timeout:.0f} s; {last})")


def _has_ready_worker(management: Address, keys: dict[str, str], model: str, exclude_pids: frozenset[int] | set[int]) -> bool:
    status, _, body = request(management, "GET", f"/models/{model}", token=keys["management"], timeout=10)
    if status == 404:  # a server started before this model was archived does not load it
        raise RuntimeError(f"the running TorchServe has no model {model!r}: it loads its store's archives when it "
                           "starts, so it was started before this one was archived (`make stop`, then start it again)")
    if status != 200:
        raise ValueError(f"GET /models/{model}: HTTP {status} {body[:200]!r}")
    workers = json.loads(body)[0].get("workers", [])
    return any(w.get("status") == "READY" and w.get("pid") not in exclude_pids for w in workers)
