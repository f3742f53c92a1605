"""Helpers of the browser page's tests (no tests here): the system Chromium, its headless flags, and the
page's pinned onnxruntime-web."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.tools.web import WEB

CHROMIUM = Path("/usr/bin/chromium")
# A fresh headless profile that reaches nothing outside loopback; the fake camera needs no permission prompt.
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--disable-quic", "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream"]


def ensure_node_modules() -> Path:
    """The pinned onnxruntime-web, installed by the real `npm ci` when it is not there yet."""
    if not (WEB / "node_modules" / "onnxruntime-web").exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is missing: install Node.js 20 and npm (apt-get install nodejs npm)")
        subprocess.run(["npm", "ci", "--prefix", str(WEB), "--ignore-scripts", "--no-audit", "--no-fund"], check=True)
    return WEB / "node_modules"
