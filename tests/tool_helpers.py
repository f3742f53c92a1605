"""Helpers of the tool modules' unit tests (no tests here): a small perceptual loss, markdown table
readers, the BT.601 colour formulas written out, a local HTTP server and a stand-in for TorchServe's APIs."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common.image_sources import load_style
from pipeline.loss.losses import build_loss

STYLES = ["a", "b", "c"]  # `tiny_trio`'s (tests/conftest.py)
LOSS_HP = {"style_size": 32, "style_weight": 1e-4, "content_weight": 2e-5}  # `small_loss`'s, for checkpoints


def small_loss(vgg_weights: Path) -> Any:
    """One perceptual loss (the real, verified VGG-16) for a 32 px style image, with two overridden
    weights; every VGG weight it keeps is checked to be the verified one."""
    from pipeline.loss.vgg_weights import load_state_dict

    built = build_loss(load_style("skimage:coffee", 32), {**LOSS_HP, "lr": 0.5, "vgg_weights": str(vgg_weights)})
    verified = load_state_dict(vgg_weights)
    kept = {f"features.{k}": v for k, v in built.vgg.features.state_dict().items()}
    assert kept.keys() <= verified.keys() and all(torch.equal(v, verified[k]) for k, v in kept.items())
    return built




def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in `text` (separator rows left out)."""
    return [[c.strip() for c in line.strip()[1:-1].split("|")] for line in text.splitlines()
            if line.startswith("|") and not set(line) <= set("|-")]


def tables_are_rectangular(text: str) -> bool:
    """Each markdown table (a block of consecutive `|` lines) has as many cells per row as its header."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.startswith("|"):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return all(len({line.count("|") for line in block}) == 1 for block in blocks if block)


def bt601_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) RGB in [0, 1] → Y, Cb, Cr (JPEG's full-range BT.601, chroma centred on 0.5), written out."""
    r, g, b = rgb.astype(np.float64)
    return np.stack([0.299 * r + 0.587 * g + 0.114 * b,
                     0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                     0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b])


def bt601_rgb(ycc: np.ndarray) -> np.ndarray:
    """The textbook inverse of `bt601_ycbcr` (JFIF's constants), not clamped."""
    y, cb, cr = ycc[0], ycc[1] - 0.5, ycc[2] - 0.5
    return np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb])


class TorchServeStandIn(BaseHTTPRequestHandler):
    """TorchServe's APIs as `wait_ready` polls them: GET /ping with the inference key `inf-key`; GET
    /models/NAME with the management key `mgmt-key`, one worker (pid `server.worker_pid`) READY from
    poll `server.ready_after` on (counted in `server.polls`), 404 for NAME `missing`; POST /echo
    answers 201 with the request's body and Authorization header. Anything else: 401."""

    def do_GET(self) -> None:
        srv: Any = self.server
        auth = self.headers.get("Authorization")
        if self.path == "/ping" and auth == "Bearer inf-key":
            self._send(200, b'{"status": "Healthy"}')
        elif self.path == "/models/missing" and auth == "Bearer mgmt-key":
            self._send(404, b'{"code": 404}')
        elif self.path.startswith("/models/") and auth == "Bearer mgmt-key":
            srv.polls += 1
            state = "READY" if srv.polls >= srv.ready_after else "LOADING"
            self._send(200, json.dumps([{"modelName": self.path[8:], "workers": [
                {"id": "9000", "pid": srv.worker_pid, "status": state}]}]).encode())
        else:
            self._send(401, b'{"code": 401}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(201, json.dumps({"auth": self.headers.get("Authorization"), "body": body.decode()}).encode(), "text/x-echo")

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class LocalHTTPServer:
    """A ThreadingHTTPServer on a free loopback port, serving `handler` in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], **attrs: Any):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        for k, v in attrs.items():
            setattr(self.httpd, k, v)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
