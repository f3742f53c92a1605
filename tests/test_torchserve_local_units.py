"""`pipeline/ops/torchserve_local.py` without starting TorchServe: its config, ports, multipart bodies,
readiness polling against a stand-in, and the launcher's process group."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import pytest

from pipeline.ops import torchserve_local
from tool_helpers import LocalHTTPServer, TorchServeStandIn

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


# ---- pipeline/ops/torchserve_local.py ------------------------------------------------------------

def _properties(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a key is set twice"
    return {k: v for k, v in pairs}


def test_free_ports_are_distinct_and_bindable() -> None:
    """free_ports(n): n distinct unprivileged ports, each free to bind on 127.0.0.1 afterwards."""
    ports = torchserve_local.free_ports(6)
    assert len(set(ports)) == 6 and all(1024 <= p <= 65535 for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_local_torchserve_config_is_loopback_token_auth_on_its_own_ports(tmp_path: Path) -> None:
    """The constructor writes cwd/config.properties from the repo's: every listener on 127.0.0.1 at
    six distinct free ports (the worker port too), the private store, token authorization still on,
    every other line kept; nothing is started."""
    repo = torchserve_local.ROOT / "config.properties"
    server = torchserve_local.LocalTorchServe(tmp_path / "ts", tmp_path / "store")
    written = tmp_path / "ts" / "config.properties"
    props, original = _properties(written), _properties(repo)
    ports = [server.inference, server.management, server.metrics, server.grpc_inference, server.grpc_management,
             int(props["initial_worker_port"])]
    assert len(set(ports)) == 6
    assert props["inference_address"] == f"http://127.0.0.1:{server.inference}"
    assert props["management_address"] == f"http://127.0.0.1:{server.management}"
    assert props["metrics_address"] == f"http://127.0.0.1:{server.metrics}"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == (str(server.grpc_inference), str(server.grpc_management))
    assert props["grpc_inference_address"] == "127.0.0.1" and props["model_store"] == str((tmp_path / "store").resolve())
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    changed = {"inference_address", "management_address", "metrics_address", "grpc_inference_port",
               "grpc_management_port", "model_store"}
    assert {k: v for k, v in props.items() if k not in changed | {"initial_worker_port"}} == \
        {k: v for k, v in original.items() if k not in changed}
    comments = [line for line in repo.read_text().splitlines() if line.startswith("#")]
    assert [line for line in written.read_text().splitlines() if line.startswith("#")] == comments
    assert server.proc is None and server.keys == {}
    server.stop()  # never started: nothing to stop


def test_derived_config_overrides_replace_in_place_or_append(tmp_path: Path) -> None:
    """overrides replace a key on its own line (order kept) or are appended when new; the worker
    port comes last."""
    src = tmp_path / "src.properties"
    src.write_text("# c\nmax_request_size=100\ninference_address=http://0.0.0.0:1\n  # indented=comment\nload_models=all\n")
    dst = tmp_path / "dst.properties"
    torchserve_local.derived_config(src, dst, Path("/store"), [1, 2, 3, 4, 5, 6],
                                    {"max_request_size": "7", "job_queue_size": "3"})
    lines = dst.read_text().splitlines()
    assert lines == ["# c", "max_request_size=7", "inference_address=http://127.0.0.1:1", "  # indented=comment",
                     "load_models=all", "management_address=http://127.0.0.1:2", "metrics_address=http://127.0.0.1:3",
                     "grpc_inference_port=4", "grpc_management_port=5", "model_store=/store", "job_queue_size=3",
                     "initial_worker_port=6"]


def test_multipart_body_parses_back() -> None:
    """multipart(): a standard parser (email) reads back the one field, its file name, type and bytes."""
    data = bytes(range(256)) + b"\r\n--not-a-boundary\r\n"
    body, content_type = torchserve_local.multipart("data", "in.png", data, "image/png")
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    (part,) = list(message.iter_parts())
    assert part.get_param("name", header="content-disposition") == "data"
    assert part.get_filename() == "in.png" and part.get_content_type() == "image/png"
    assert part.get_payload(decode=True) == data


def test_wait_ready_reads_the_keys_and_waits_for_a_ready_worker(tmp_path: Path) -> None:
    """wait_ready against a stand-in API: keys from key_file.json, /ping with the inference key, the
    worker list with the management key, polled until READY; a worker whose pid is excluded never
    counts (TimeoutError with the logs); a dead server is a RuntimeError with its output."""
    api = LocalHTTPServer(TorchServeStandIn, polls=0, ready_after=2, worker_pid=4242)
    server = torchserve_local.LocalTorchServe(tmp_path / "ts", tmp_path / "store")
    server.inference = server.management = api.port
    (server.cwd / "key_file.json").write_text(json.dumps({"inference": {"key": "inf-key"}, "management": {"key": "mgmt-key"}}))
    (server.cwd / "torchserve.out").write_text("launcher output\n")
    (server.cwd / "logs").mkdir()
    (server.cwd / "logs" / "ts_log.log").write_text("frontend log\n")
    server.proc = subprocess.Popen(["sleep", "30"])
    try:
        assert server.wait_ready(["demo"], timeout=10) > 0
        assert server.keys == {"inference": "inf-key", "management": "mgmt-key"} and api.httpd.polls == 2
        assert server.workers("demo")[0]["status"] == "READY"
        assert server.request("GET", "/models/demo", port=api.port)[0] == 401  # the inference key is not the management key
        with pytest.raises(TimeoutError, match="not ready in time(.|\n)*launcher output(.|\n)*frontend log"):
            server.wait_ready(["demo"], timeout=0.1, exclude_pids={4242})
    finally:
        server.proc.kill()
        server.proc.wait()
        api.close()
    with pytest.raises(RuntimeError, match="torchserve exited:\nlauncher output"):
        server.wait_ready(["demo"], timeout=10)


def test_start_runs_the_launcher_in_its_own_group_and_stop_ends_the_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """start(): the launcher (a shell script standing in for `torchserve`) runs in cwd with the
    --ts-config arguments, TMPDIR = cwd and the extra env; stop() signals its whole process group:
    the launcher's child gets the SIGTERM too (the launcher itself only waits for it and reaps it)."""
    script = tmp_path / "torchserve"
    script.write_text('#!/bin/sh\necho "args: $*"\necho "tmpdir: $TMPDIR"\necho "extra: $INSTYLE_TEST_EXTRA"\n'
                      'sleep 5 &\nchild=$!\ntrap \'wait $child; echo "child exit: $?"; exit 0\' TERM\n'
                      'echo "child: $child"\nwait $child\n')
    script.chmod(0o755)
    monkeypatch.setattr(torchserve_local, "TORCHSERVE", script)
    server = torchserve_local.LocalTorchServe(tmp_path / "ts", tmp_path / "store", env={"INSTYLE_TEST_EXTRA": "yes"})
    server.start()
    try:
        out = server.cwd / "torchserve.out"
        deadline = time.monotonic() + 10
        while "child:" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.getpgid(server.proc.pid) == server.proc.pid  # its own process group
        start = time.monotonic()
    finally:
        server.stop()
    assert time.monotonic() - start < 4  # not the child's own 5 s: the group's SIGTERM ended it
    text = out.read_text()
    assert "args: --start --ncs --foreground --ts-config config.properties" in text
    assert f"tmpdir: {server.cwd}" in text and "extra: yes" in text
    assert f"child exit: {128 + signal.SIGTERM}" in text and server.proc.poll() == 0


def test_start_without_torchserve_installed_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """start() names the missing launcher and the fix instead of failing inside Popen."""
    monkeypatch.setattr(torchserve_local, "TORCHSERVE", tmp_path / "no-torchserve")
    server = torchserve_local.LocalTorchServe(tmp_path / "ts", tmp_path / "store")
    with pytest.raises(FileNotFoundError, match="make install"):
        server.start()
    assert server.proc is None
