"""A private TorchServe on free loopback ports, for the integration tests, `make loadtest` and
`make bench`.

It runs the repository's own config.properties with only the ports, the model store and any
explicit `overrides` changed, in its own working directory (key_file.json, logs/, pid file and
worker sockets land there) and its own process group, which is what `stop()` signals: a server
is never stopped by process name.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Mapping

from pipeline.ops.torchserve_api import Response, request, wait_ready

ROOT = Path(__file__).resolve().parents[2]
TORCHSERVE = Path(sys.executable).parent / "torchserve"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def derived_config(src: Path, dst: Path, store: Path, ports: list[int],
                   overrides: Mapping[str, str] | None = None) -> None:
    """`src` (the repo's config.properties) with the given ports and store; every other line kept."""
    inference, management, metrics, grpc_i, grpc_m, worker = ports
    override = {"inference_address": f"http://127.0.0.1:{inference}", "management_address": f"http://127.0.0.1:{management}",
                "metrics_address": f"http://127.0.0.1:{metrics}", "grpc_inference_port": str(grpc_i),
                "grpc_management_port": str(grpc_m), "model_store": str(store), **(overrides or {})}
    lines, seen = [], set()
    for line in src.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in override:
            line = f"{key}={override[key]}"
            seen.add(key)
        lines.append(line)
    lines += [f"{k}={v}" for k, v in override.items() if k not in seen]  # e.g. a lower max_request_size
    lines.append(f"initial_worker_port={worker}")  # worker sockets must not collide with a dev server's
    dst.write_text("\n".join(lines) + "\n")


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A one-field multipart/form-data body and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class LocalTorchServe:
    """TorchServe in `cwd` serving the .mar files of `store` (see the module docstring)."""

    def __init__(self, cwd: Path, store: Path, overrides: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, config: Path = ROOT / "config.properties"):
        self.cwd = Path(cwd)
        self.cwd.mkdir(parents=True, exist_ok=True)
        ports = free_ports(6)
        self.inference, self.management, self.metrics = ports[:3]
        self.grpc_inference, self.grpc_management = ports[3:5]
        derived_config(config, self.cwd / "config.properties", Path(store).resolve(), ports, overrides)
        self.extra_env = dict(env or {})
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if not TORCHSERVE.exists():
            raise FileNotFoundError(f"{TORCHSERVE} not found: run `make install`")
        # TMPDIR/TEMP: the launcher's pid file and Java's tmpdir (model extraction, worker sockets) stay in cwd.
        env = {**os.environ, "TMPDIR": str(self.cwd), "TEMP": str(self.cwd),
               "PATH": f"{TORCHSERVE.parent}{os.pathsep}{os.environ.get('PATH', '')}", **self.extra_env}
        self._log = open(self.cwd / "torchserve.out", "wb")
        self.proc = subprocess.Popen([str(TORCHSERVE), "--start", "--ncs", "--foreground", "--ts-config", "config.properties"],
                                     cwd=self.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self) -> None:
        """SIGTERM the server's process group (launcher, Java, workers), SIGKILL what is left."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                time.sleep(0.5)  # let Java's shutdown hook finish reaping its workers
                os.killpg(self.proc.pid, 0)  # anything of the group still alive → escalate
            except (subprocess.TimeoutExpired, ProcessLookupError):
                if self.proc.poll() is not None:
                    break
        self._log.close()

    def __enter__(self) -> "LocalTorchServe":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        parts = [(self.cwd / "torchserve.out").read_text(errors="replace")[-3000:]]
        for name in ("ts_log.log", "model_log.log"):
            p = self.cwd / "logs" / name
            if p.exists():
                parts.append(f"--- {name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
                port: int | None = None, token: str | None = "inference", timeout: float = 300) -> Response:
        """(status, content type, body) of one HTTP request to a port of this server (default: the
        inference API); `token` names a key of key_file.json."""
        return request(("127.0.0.1", port or self.inference), method, path, body, headers,
                       self.keys[token] if token else None, timeout)

    def workers(self, model: str) -> list[dict]:
        """The management API's worker list of `model` (id, pid, status, ...)."""
        status, _, body = self.request("GET", f"/models/{model}", port=self.management, token="management")
        if status != 200:
            raise RuntimeError(f"describe {model}: HTTP {status} {body[:200]!r}")
        return json.loads(body)[0]["workers"]

    def wait_ready(self, models: list[str], timeout: float = 180, exclude_pids: set[int] = frozenset()) -> float:
        """Seconds until the keys exist, /ping is Healthy and every model has a READY worker
        (whose pid is not in `exclude_pids`: a restarted worker); `torchserve_api.wait_ready`, with
        this server's output when it exits or times out."""
        def alive() -> None:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("torchserve exited:\n" + self.logs())

        try:
            keys, seconds = wait_ready(self.cwd / "key_file.json", ("127.0.0.1", self.inference),
                                       ("127.0.0.1", self.management), models, timeout, exclude_pids, alive)
        except TimeoutError as e:
            raise TimeoutError(f"{e}:\n{self.logs()}") from None
        self.keys.update(keys)  # as the file has them now (a key rotated since is current)
        return seconds
