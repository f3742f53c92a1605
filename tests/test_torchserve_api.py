"""`pipeline/ops/torchserve_api.py` against a stand-in for TorchServe's APIs: one request with its
token, the key file, and waiting for a READY worker (what `make demo`, the private test server,
the load test and the gRPC client share)."""
from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.ops import torchserve_api
from pipeline.ops.torchserve_local import free_ports
from tool_helpers import LocalHTTPServer, TorchServeStandIn

KEYS = {"inference": {"key": "inf-key"}, "management": {"key": "mgmt-key", "expiration time": "x"}, "API": {"key": "api"}}


@pytest.fixture
def api() -> Any:
    server = LocalHTTPServer(TorchServeStandIn, polls=0, ready_after=3, worker_pid=7)
    yield server
    server.close()


def test_request_sends_the_token_and_returns_status_type_and_body(api: Any) -> None:
    status, ctype, body = torchserve_api.request(("127.0.0.1", api.port), "POST", "/echo", b"photo", token="tok")
    assert (status, ctype) == (201, "text/x-echo") and json.loads(body) == {"auth": "Bearer tok", "body": "photo"}
    status, _, body = torchserve_api.request(("127.0.0.1", api.port), "POST", "/echo", b"x")
    assert status == 201 and json.loads(body)["auth"] is None
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:  # two requests on one kept-alive connection
        assert [torchserve_api.exchange(conn, "POST", "/echo", b, token="k")[0] for b in (b"1", b"2")] == [201, 201]
    finally:
        conn.close()
    (port,) = free_ports(1)
    with pytest.raises(ConnectionRefusedError):
        torchserve_api.request(("127.0.0.1", port), "GET", "/ping", timeout=5)


def test_read_keys_gives_every_key_by_name_and_the_files_own_errors(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps(KEYS))
    assert torchserve_api.read_keys(key_file) == {"inference": "inf-key", "management": "mgmt-key", "API": "api"}
    with pytest.raises(FileNotFoundError):
        torchserve_api.read_keys(tmp_path / "none.json")
    key_file.write_text('{"inference": {"ke')  # half written
    with pytest.raises(ValueError):
        torchserve_api.read_keys(key_file)
    key_file.write_text(json.dumps({"inference": "flat"}))
    with pytest.raises(TypeError):
        torchserve_api.read_keys(key_file)


def test_wait_ready_waits_for_the_key_file_and_a_ready_worker(api: Any, tmp_path: Path) -> None:
    """The key file appears (half written first) while it waits; it returns the keys once the model's
    worker is READY (the third poll), never earlier; an excluded pid never counts (TimeoutError
    naming what is missing); a model the server has not got is a RuntimeError at once."""
    key_file, address = tmp_path / "key_file.json", ("127.0.0.1", api.port)

    def write_later() -> None:
        time.sleep(0.3)
        key_file.write_text('{"inference": ')
        time.sleep(0.3)
        key_file.write_text(json.dumps(KEYS))

    writer = threading.Thread(target=write_later)
    writer.start()
    keys, seconds = torchserve_api.wait_ready(key_file, address, address, ["demo"], timeout=20)
    writer.join()
    assert keys["inference"] == "inf-key" and keys["management"] == "mgmt-key"
    assert seconds >= 0.6 and api.httpd.polls == 3
    with pytest.raises(TimeoutError, match="not ready in time .*no READY worker of demo"):
        torchserve_api.wait_ready(key_file, address, address, ["demo"], timeout=0.5, exclude_pids={7})
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="has no model 'missing'"):
        torchserve_api.wait_ready(key_file, address, address, ["demo", "missing"], timeout=20)
    assert time.monotonic() - start < 5
    with pytest.raises(RuntimeError, match="exited"):
        torchserve_api.wait_ready(key_file, address, address, ["demo"], timeout=20,
                                  alive=lambda: (_ for _ in ()).throw(RuntimeError("exited")))
