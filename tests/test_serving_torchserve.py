"""End to end: export → archive → a real TorchServe (Java frontend + Python worker) with the repo's
config.properties (only ports and the model store changed) → HTTP requests with the token.

The server runs in its own process group, in tmp_path (key_file.json, logs/, pid file, worker
sockets all land there), and is stopped by that recorded process group id, never by name.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline.archive import archive_run
from pipeline.model_io import load_model
from pipeline.stylize import stylize_bytes
from test_serving_helpers import decode_pil, encode_pil, rng_image, shared_export

ROOT = Path(__file__).resolve().parent.parent
TORCHSERVE = Path(sys.executable).parent / "torchserve"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None or not TORCHSERVE.exists(), reason="needs Java and torchserve")]


def free_ports(n: int) -> list[int]:
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


def derived_config(path: Path, store: Path, ports: list[int]) -> None:
    """The repo's config.properties with free loopback ports and the tmp model store; all else kept."""
    inference, management, metrics, grpc_i, grpc_m, worker = ports
    override = {"inference_address": f"http://127.0.0.1:{inference}", "management_address": f"http://127.0.0.1:{management}",
                "metrics_address": f"http://127.0.0.1:{metrics}", "grpc_inference_port": str(grpc_i),
                "grpc_management_port": str(grpc_m), "model_store": str(store)}
    lines, seen = [], set()
    for line in (ROOT / "config.properties").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in override:
            line = f"{key}={override[key]}"
            seen.add(key)
        lines.append(line)
    assert seen == set(override), f"config.properties lacks {set(override) - seen}"
    lines.append(f"initial_worker_port={worker}")  # worker sockets must not collide with a dev server's
    path.write_text("\n".join(lines) + "\n")


class Server:
    def __init__(self, cwd: Path, ports: list[int]):
        self.cwd, self.inference, self.management, self.metrics = cwd, ports[0], ports[1], ports[2]
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # TMPDIR/TEMP: the launcher's pid file and Java's tmpdir (model extraction, worker sockets) stay in cwd.
        env = {**os.environ, "TMPDIR": str(self.cwd), "TEMP": str(self.cwd),
               "PATH": f"{TORCHSERVE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.log = open(self.cwd / "torchserve.out", "wb")
        self.proc = subprocess.Popen([str(TORCHSERVE), "--start", "--ncs", "--foreground", "--ts-config", "config.properties"],
                                     cwd=self.cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)  # the group this test created: launcher, Java, workers
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                time.sleep(0.5)  # let Java's shutdown hook finish reaping its workers
                os.killpg(self.proc.pid, 0)  # anything of the group still alive → escalate
            except (subprocess.TimeoutExpired, ProcessLookupError):
                if self.proc.poll() is not None:
                    break
        self.log.close()

    def logs(self) -> str:
        parts = [(self.cwd / "torchserve.out").read_text(errors="replace")[-3000:]]
        for name in ("ts_log.log", "model_log.log"):
            p = self.cwd / "logs" / name
            if p.exists():
                parts.append(f"--- {name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                port: int | None = None, token: str | None = "inference") -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.inference, timeout=120)
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {self.keys[token]}"
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", ""), resp.read()
        finally:
            conn.close()

    def wait_ready(self, models: list[str], timeout: float = 120) -> float:
        """Seconds until the keys exist, /ping is Healthy and every model has a READY worker."""
        start = time.monotonic()
        key_file = self.cwd / "key_file.json"
        while time.monotonic() - start < timeout:
            assert self.proc.poll() is None, "torchserve exited:\n" + self.logs()
            try:
                if not self.keys and key_file.exists():
                    data = json.loads(key_file.read_text())
                    self.keys = {"inference": data["inference"]["key"], "management": data["management"]["key"]}
                if self.keys and self.request("GET", "/ping")[0] == 200:
                    ready = 0
                    for m in models:
                        status, _, body = self.request("GET", f"/models/{m}", port=self.management, token="management")
                        ready += status == 200 and any(w["status"] == "READY" for w in json.loads(body)[0]["workers"])
                    if ready == len(models):
                        return time.monotonic() - start
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
            time.sleep(0.25)
        raise AssertionError("TorchServe not ready in time:\n" + self.logs())


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_pil(data))


def test_torchserve_end_to_end(tmp_path_factory, tmp_path):
    run = shared_export(tmp_path_factory)
    store = tmp_path / "model_store"
    archive_run(run, store, name="demo")
    archive_run(run, store, name="batched", batch_size=4, max_batch_delay_ms=400)
    ports = free_ports(6)
    derived_config(tmp_path / "config.properties", store, ports)
    cfg = (tmp_path / "config.properties").read_text()
    assert "disable_token_authorization=false" in cfg and "enable_model_api=false" in cfg

    model, _ = load_model(run / "export" / "generator.pt")  # the offline CLI's path, same file as served

    def offline(data: bytes, **params: str) -> bytes:
        return stylize_bytes(model, data, {k: v for k, v in params.items()})[0]

    server = Server(tmp_path, ports)
    t0 = time.monotonic()
    server.start()
    try:
        ready_s = server.wait_ready(["demo", "batched"])
        odd_jpeg = encode_pil(rng_image(37, 53, seed=11), "JPEG", quality=90)
        t1 = time.monotonic()
        status, ctype, body = server.request("POST", "/predictions/demo", odd_jpeg, {"Content-Type": "image/jpeg"})
        first_s = time.monotonic() - t1
        assert (status, ctype) == (200, "image/png"), body[:500]
        out = decode_pil(body)
        assert out.size == (53, 37) and out.format == "PNG"
        assert np.array_equal(pixels(body), pixels(offline(odd_jpeg)))

        # PNG with alpha (multipart), greyscale PNG, JPEG out via header, WebP via /invocations query
        rgba = encode_pil(rng_image(31, 50, channels=4, seed=12))
        form, form_type = multipart("image", "cut.png", rgba, "image/png")
        status, ctype, body = server.request("POST", "/predictions/demo", form, {"Content-Type": form_type})
        assert (status, ctype) == (200, "image/png") and decode_pil(body).mode == "RGBA"
        assert np.array_equal(pixels(body), pixels(offline(rgba)))
        grey = encode_pil(rng_image(40, 29, seed=13), "PNG", mode="L")
        status, ctype, body = server.request("POST", "/predictions/demo", grey, {"Content-Type": "image/png"})
        assert status == 200 and decode_pil(body).size == (29, 40)
        assert np.array_equal(pixels(body), pixels(offline(grey)))
        status, ctype, body = server.request("POST", "/predictions/demo", odd_jpeg,
                                             {"Content-Type": "application/octet-stream", "X-Format": "jpeg", "X-Quality": "80"})
        assert (status, ctype) == (200, "image/jpeg")
        assert np.array_equal(pixels(body), pixels(offline(odd_jpeg, format="jpeg", quality="80")))
        status, ctype, body = server.request("POST", "/invocations?model_name=demo&format=webp&max_side=20", odd_jpeg,
                                             {"Content-Type": "image/jpeg"})
        assert (status, ctype) == (200, "image/webp") and max(decode_pil(body).size) == 20

        # security: no token / wrong token refused by the frontend
        assert 400 <= server.request("POST", "/predictions/demo", odd_jpeg, {"Content-Type": "image/jpeg"}, token=None)[0] < 500
        server.keys["wrong"] = "not-the-key"
        assert 400 <= server.request("POST", "/predictions/demo", odd_jpeg, {"Content-Type": "image/jpeg"}, token="wrong")[0] < 500

        # bad input: a 4xx JSON naming the problem; the worker survives and the next request works
        status, ctype, body = server.request("POST", "/predictions/demo", b"this is not an image", {"Content-Type": "image/png"})
        assert status == 400 and ctype.startswith("application/json") and "cannot decode" in json.loads(body)["error"]
        status, ctype, body = server.request("POST", "/predictions/demo", odd_jpeg, {"Content-Type": "image/jpeg", "X-Format": "gif"})
        assert status == 400 and "gif" in json.loads(body)["error"]
        status, _, body = server.request("POST", "/predictions/demo", grey, {"Content-Type": "image/png"})
        assert status == 200 and np.array_equal(pixels(body), pixels(offline(grey)))

        # batching: concurrent requests of different sizes land in one TorchServe batch (batchSize 4)
        images = [encode_pil(rng_image(*hw, seed=20 + i)) for i, hw in enumerate([(37, 53), (64, 64), (37, 53)])]
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda d: server.request("POST", "/predictions/batched", d, {"Content-Type": "image/png"}), images))
        for data, (status, ctype, body) in zip(images, results):
            assert status == 200, body[:300]
            assert np.abs(pixels(body).astype(int) - pixels(offline(data)).astype(int)).max() <= 1

        status, _, body = server.request("GET", "/metrics", port=server.metrics, token=None)
        assert status == 200 and b"ModelMs" in body and b"Megapixels" in body
        print(f"\ntorchserve: start→ready {ready_s:.1f} s, first response {first_s * 1000:.0f} ms, "
              f"test total {time.monotonic() - t0:.1f} s")
    finally:
        server.stop()
    assert server.proc.poll() is not None
