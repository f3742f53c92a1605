"""`pipeline/ops/loadtest.py` against a local HTTP server standing in for TorchServe: inputs, response checks,
counts, deadlines, reconnects and argument errors."""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from pipeline.ops import loadtest
from serving_helpers import encode_pil, rng_image
from tool_helpers import LocalHTTPServer

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


# ---- pipeline/ops/loadtest.py --------------------------------------------------------------------

def test_loadtest_inputs_are_distinct_jpegs_of_the_planned_sizes() -> None:
    """make_inputs: VARIANTS JPEGs per size, in SIZES order, each decoding to its recorded (w, h);
    distinct within a size; the same for the same seed, different for another."""
    inputs = loadtest.make_inputs()
    assert len(inputs) == len(loadtest.SIZES) * loadtest.VARIANTS
    for k, (body, size) in enumerate(inputs):
        h, w = loadtest.SIZES[k // loadtest.VARIANTS]
        im = Image.open(io.BytesIO(body))
        assert im.format == "JPEG" and im.size == size == (w, h)
    assert len({body for body, _ in inputs}) == len(inputs)
    assert loadtest.make_inputs() == inputs and loadtest.make_inputs(seed=1)[0][0] != inputs[0][0]


def test_loadtest_check_accepts_only_a_png_of_the_request_size() -> None:
    """check(): None for an HTTP 200 PNG of the right size; the status, 'not a valid image', the
    wrong format or the wrong size otherwise."""
    png = encode_pil(rng_image(20, 30))
    assert loadtest.check(200, png, (30, 20)) is None
    assert loadtest.check(503, b'{"code": 503}', (30, 20)).startswith("HTTP 503")
    assert "not a valid image" in loadtest.check(200, b"garbage", (30, 20))
    assert loadtest.check(200, png[: len(png) // 2], (30, 20)) is not None  # truncated
    assert loadtest.check(200, encode_pil(rng_image(20, 30), "JPEG"), (30, 20)) == "got JPEG (30, 20), expected PNG (30, 20)"
    assert loadtest.check(200, png, (20, 30)) == "got PNG (30, 20), expected PNG (20, 30)"
    assert loadtest.machine().endswith(f", {os.cpu_count()} cores")


class _ModelHandler(BaseHTTPRequestHandler):
    """A stand-in for TorchServe's predictions API: Bearer token checked, the JPEG's negative as PNG.
    server.faults: {size index: "500" | "random" | "size"} misbehaves for the images of that size."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK stalls

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv: Any = self.server
        if self.headers.get("Authorization") != f"Bearer {srv.token}" or self.headers.get("Content-Type") != "image/jpeg":
            return self._send(401, b'{"code": 401}')
        arr = 255 - np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        fault = srv.faults.get(loadtest.SIZES.index(arr.shape[:2]))
        with srv.lock:
            srv.count += 1
            count = srv.count
        if fault == "500":
            return self._send(500, b'{"code": 500, "message": "worker died"}')
        if fault == "random":
            arr = arr.copy()
            arr[0, 0] = (count % 256, count // 256 % 256, 7)
        if fault == "size":
            arr = arr[:, :-1]
        key = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).digest()
        if key not in srv.cache:  # the same answer bytes for the same image, as a deterministic model gives
            srv.cache[key] = encode_pil(np.ascontiguousarray(arr), compress_level=1)
        self._send(200, srv.cache[key])

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def model_server() -> Iterator[LocalHTTPServer]:
    server = LocalHTTPServer(_ModelHandler, token="tok", faults={}, lock=threading.Lock(), count=0, cache={})
    yield server
    server.close()


def test_run_load_counts_good_answers(model_server: LocalHTTPServer) -> None:
    """A well-behaved server: every planned request answered and good, latency percentiles set."""
    ts = SimpleNamespace(inference=model_server.port, keys={"inference": "tok"})
    result = loadtest.run_load(ts, "demo", clients=3, requests=6, max_seconds=60)
    assert (result["planned"], result["answered"], result["good"], result["errors"], result["lost"]) == (18, 18, 18, 0, 0)
    assert model_server.httpd.count == 18 and 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["requests_per_s"] > 0 and result["first_errors"] == []


def test_run_load_catches_errors_swaps_and_wrong_sizes(model_server: LocalHTTPServer) -> None:
    """HTTP errors, wrong sizes and answers that differ from the first answer to the same image are
    each counted as errors; the counts follow from which image every request sends."""
    model_server.httpd.faults = {0: "500", 1: "random", 2: "size"}
    ts = SimpleNamespace(inference=model_server.port, keys={"inference": "tok"})
    clients, requests = 3, 8
    n_inputs = len(loadtest.SIZES) * loadtest.VARIANTS
    sent = [(cid * 7 + i) % n_inputs for cid in range(clients) for i in range(requests)]
    group = [k // loadtest.VARIANTS for k in sent]
    random_ks = [k for k, g in zip(sent, group) if g == 1]
    want_errors = group.count(0) + group.count(2) + len(random_ks) - len(set(random_ks))
    result = loadtest.run_load(ts, "demo", clients, requests, max_seconds=60)
    assert (result["answered"], result["errors"], result["good"]) == (24, want_errors, 24 - want_errors)
    text = "\n".join(result["first_errors"])
    assert len(result["first_errors"]) == min(10, want_errors)
    assert all(re.match(r"client \d request \d: (HTTP 500|got PNG|response differs)", e) for e in result["first_errors"])
    assert "HTTP 500" in text or "got PNG" in text


def test_run_load_stops_at_the_deadline_and_refuses_a_bad_token(model_server: LocalHTTPServer) -> None:
    """max_seconds 0: nothing sent, everything lost, no percentiles; a wrong token: all HTTP 401 errors."""
    ts = SimpleNamespace(inference=model_server.port, keys={"inference": "tok"})
    result = loadtest.run_load(ts, "demo", clients=2, requests=3, max_seconds=0)
    assert (result["answered"], result["lost"], result["good"], result["p50_ms"], result["p99_ms"]) == (0, 6, 0, None, None)
    assert model_server.httpd.count == 0
    ts.keys["inference"] = "wrong"
    result = loadtest.run_load(ts, "demo", clients=1, requests=2, max_seconds=60)
    assert result["errors"] == 2 and result["good"] == 0 and all("HTTP 401" in e for e in result["first_errors"])


class _ClosingHandler(BaseHTTPRequestHandler):
    """Answers one request per connection while advertising keep-alive (an idle connection the server
    dropped); with server.silent, closes without answering at all."""
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        srv: Any = self.server
        srv.requests_seen += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        self.close_connection = True
        if srv.silent:
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def test_client_reconnects_once_after_a_dropped_connection() -> None:
    """Client.post: a keep-alive connection the server dropped is reopened once (the request
    succeeds); a server that never answers raises after the second try."""
    server = LocalHTTPServer(_ClosingHandler, requests_seen=0, silent=False)
    try:
        client = loadtest.Client(server.port, "tok")
        for _ in range(3):
            status, body, seconds = client.post("/predictions/x", b"data")
            assert (status, body) == (200, b"ok") and seconds > 0
        assert server.httpd.requests_seen == 3  # each post after the first needed its retry on a new connection
        server.httpd.silent = True
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            loadtest.Client(server.port, "tok").post("/predictions/x", b"data")
        assert server.httpd.requests_seen == 5  # two attempts, then the error
    finally:
        server.close()


def test_loadtest_command_refuses_bad_arguments_before_any_server(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Exit 2 without starting TorchServe for non-positive clients/requests, an empty store, an
    ambiguous store (two .mar, no --model) and an unknown model; the message lists what was found."""
    store = tmp_path / "store"
    store.mkdir()
    assert loadtest.command(store=store, clients=0) == 2
    assert loadtest.command(store=store, requests=0) == 2
    assert loadtest.command(store=store) == 2
    assert "found: none" in capsys.readouterr().err
    (store / "b.mar").write_bytes(b"")
    (store / "a.mar").write_bytes(b"")
    assert loadtest.command(store=store) == 2
    assert loadtest.command(store=store, model="c") == 2
    err = capsys.readouterr().err
    assert err.count("(found: a, b)") == 2 and "no model c to load-test" in err
