"""Helpers of the tool modules' unit tests (no tests here): a small perceptual loss, markdown table
readers, the BT.601 colour formulas written out, and a local HTTP server standing in for TorchServe's APIs."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common.image_sources import load_style
from pipeline.quality import gatys

STYLES = ["a", "b", "c"]  # `tiny_trio`'s (tests/conftest.py)
LOSS_HP = {"style_size": 32, "style_weight": 1e-4, "content_weight": 2e-5}  # `small_loss`'s, for checkpoints


def small_loss(vgg_weights: Path) -> Any:
    """One perceptual loss (the real, verified VGG-16) for a 32 px style image, with two overridden
    weights; every VGG weight it keeps is checked to be the verified one."""
    from pipeline.loss.vgg_weights import load_state_dict

    built = gatys.build_loss(load_style("skimage:coffee", 32), {**LOSS_HP, "lr": 0.5, "vgg_weights": str(vgg_weights)})
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
