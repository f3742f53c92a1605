"""Issue 6 against one real TorchServe (the repo's config.properties, free loopback ports):
bad input table, a killed worker, and the security defaults probed on the live server.

The only setting changed besides ports and store is `max_request_size`, lowered to 2 MB so the
over-the-limit case needs a 3 MB body instead of a 100 MB one.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.export.archive import archive_run
from pipeline.ops.loadtest import run_load
from pipeline.ops.torchserve_local import TORCHSERVE, LocalTorchServe
from serving_helpers import decode_pil, encode_pil, rng_image, shared_export

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None or not TORCHSERVE.exists(), reason="needs Java and torchserve")]

LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = shared_export(tmp_path_factory)
    cwd = tmp_path_factory.mktemp("ts-reliability")
    archive_run(run, cwd / "model_store", name="demo", workers=1)  # one worker: the restart test kills it
    srv = LocalTorchServe(cwd, cwd / "model_store", overrides={"max_request_size": str(LIMIT)})
    srv.start()
    try:
        srv.wait_ready(["demo"])
        yield srv
    finally:
        srv.stop()


# ---- inputs -------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_size(w: int, h: int) -> bytes:
    """A syntactically valid PNG header claiming w×h (no image data needed to test the size checks)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """A ~15 kB PNG that decodes to 12000×9000 = 108 MP."""
    buf = io.BytesIO()
    Image.new("1", (12000, 9000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide × 24 high with EXIF Orientation 6 (rotate 90° CW to view): upright is 24×40."""
    im = Image.fromarray(rng_image(24, 40, seed=3))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(rng_image(30, 22, seed=s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def palette_png_with_transparency() -> bytes:
    im = Image.fromarray(rng_image(26, 33, seed=5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


def png16() -> bytes:
    arr = (np.linspace(0, 65535, 27 * 35).reshape(27, 35)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    return buf.getvalue()


JPEG = encode_pil(rng_image(37, 53, seed=1), "JPEG", quality=90)
PNG = encode_pil(rng_image(37, 53, seed=2))
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
OCTET = {"Content-Type": "application/octet-stream"}

# name, body, headers, expected status, expected (width, height, mode) for 200 / words in the error
CASES = [
    ("empty body", b"", OCTET, 400, "empty"),
    ("text as text/plain", b"hello, this is text", {"Content-Type": "text/plain"}, 415, "text"),
    ("text as octet-stream", b"hello, this is text", OCTET, 400, "cannot decode"),
    ("random bytes", np.random.default_rng(0).bytes(5000), OCTET, 400, "not a JPEG, PNG"),
    ("pdf", PDF, {"Content-Type": "application/pdf"}, 400, "not a JPEG, PNG"),
    ("truncated jpeg", JPEG[: len(JPEG) // 2], {"Content-Type": "image/jpeg"}, 400, "cannot decode"),
    ("truncated png", PNG[: len(PNG) // 2], {"Content-Type": "image/png"}, 400, "cannot decode"),
    ("0x0 png", png_with_size(0, 0), {"Content-Type": "image/png"}, 400, "header is invalid"),
    ("1x1 png", encode_pil(rng_image(1, 1)), {"Content-Type": "image/png"}, 200, (1, 1, "RGB")),
    ("16-bit png", png16(), {"Content-Type": "image/png"}, 200, (35, 27, "RGB")),
    ("cmyk jpeg", encode_pil(rng_image(29, 31), "JPEG", mode="CMYK"), {"Content-Type": "image/jpeg"}, 200, (31, 29, "RGB")),
    ("palette png + transparency", palette_png_with_transparency(), {"Content-Type": "image/png"}, 200, (33, 26, "RGBA")),
    ("greyscale png", encode_pil(rng_image(40, 29), mode="L"), {"Content-Type": "image/png"}, 200, (29, 40, "RGB")),
    ("exif-rotated jpeg", exif_rotated_jpeg(), {"Content-Type": "image/jpeg"}, 200, (24, 40, "RGB")),
    ("animated gif: first frame", animated("GIF"), {"Content-Type": "image/gif"}, 200, (22, 30, "RGB")),
    ("animated webp: first frame", animated("WEBP"), {"Content-Type": "image/webp"}, 200, (22, 30, "RGB")),
    ("decompression bomb", bomb_png(), {"Content-Type": "image/png"}, 413, "12000×9000 = 108.0 MP, over the 50.0 MP"),
    ("format=tiff", JPEG, {"Content-Type": "image/jpeg", "X-Format": "tiff"}, 400, "tiff"),
    ("max_side=-1", JPEG, {"Content-Type": "image/jpeg", "X-Max-Side": "-1"}, 400, "max_side"),
    ("quality=abc", JPEG, {"Content-Type": "image/jpeg", "X-Format": "jpeg", "X-Quality": "abc"}, 400, "quality"),
]


def assert_serves(server: LocalTorchServe) -> None:
    status, ctype, body = server.request("POST", "/predictions/demo", JPEG, {"Content-Type": "image/jpeg"})
    assert (status, ctype) == (200, "image/png") and decode_pil(body).size == (53, 37), (status, body[:300])


@pytest.mark.parametrize("name,body,headers,status,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_and_odd_input(server, name, body, headers, status, expect):
    got, ctype, resp = server.request("POST", "/predictions/demo", body, headers)
    if status == 200:
        assert (got, ctype) == (200, "image/png"), resp[:500]
        out = decode_pil(resp)
        assert (out.size[0], out.size[1], out.mode) == expect
    else:
        assert got == status and ctype.startswith("application/json"), (got, ctype, resp[:500])
        error = json.loads(resp)["error"]
        assert expect in error, error
    assert_serves(server)  # the worker survived and serves the next request


def test_payload_over_the_size_limit_gets_413(server):
    body = os.urandom(LIMIT + 1024 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", server.inference, timeout=60)
    try:
        conn.request("POST", "/predictions/demo", body=body, headers={
            "Content-Type": "image/jpeg", "Authorization": f"Bearer {server.keys['inference']}"})
        status = conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):  # the frontend may answer and close before reading it all
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status == 413
    assert_serves(server)


def test_killed_worker_is_restarted_and_serves_again(server):
    [worker] = server.workers("demo")
    pid = worker["pid"]
    os.kill(pid, signal.SIGKILL)
    seconds = server.wait_ready(["demo"], timeout=180, exclude_pids={pid})
    assert server.workers("demo")[0]["pid"] != pid
    print(f"\nworker {pid} killed; a new worker was READY after {seconds:.1f} s")
    for _ in range(3):
        assert_serves(server)


# ---- security defaults, on the running server ------------------------------------------------

def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) with a LISTEN socket on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


def other_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (to try the ports from outside loopback)."""
    addrs = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addrs.add(info[4][0])
    except OSError:
        pass
    return sorted(a for a in addrs if not a.startswith("127."))


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_security_defaults_on_the_live_server(server):
    cfg = dict(line.split("=", 1) for line in (server.cwd / "config.properties").read_text().splitlines()
               if "=" in line and not line.startswith("#"))
    ports = [server.inference, server.management, server.metrics,
             int(cfg["grpc_inference_port"]), int(cfg["grpc_management_port"])]
    # 127.0.0.1, ::1, and ::ffff:127.0.0.1 (Java binds IPv4 loopback through an IPv6 socket)
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    for port in ports:
        addrs = listening_addresses(port)
        assert addrs and addrs <= loopback, f"port {port} listens on {addrs}, not only loopback"
        for addr in other_addresses():
            with pytest.raises(OSError):
                socket.create_connection((addr, port), timeout=2).close()
    # The effective configuration as the frontend printed it at start-up.
    log = (server.cwd / "logs" / "ts_log.log").read_text()
    for name, port in (("Inference", server.inference), ("Management", server.management), ("Metrics", server.metrics)):
        assert f"{name} address: http://127.0.0.1:{port}" in log
    # Token authorization: inference and management refuse requests without the key.
    assert server.request("POST", "/predictions/demo", JPEG, {"Content-Type": "image/jpeg"}, token=None)[0] == 400
    assert server.request("GET", "/models", port=server.management, token=None)[0] == 400
    assert server.request("GET", "/models", port=server.management, token="management")[0] == 200
    # Model API off: registering or deleting a model is refused even with the management key.
    status, _, body = server.request("POST", "/models?url=https://example.com/evil.mar", port=server.management,
                                     token="management")
    assert status == 405, (status, body)  # TorchServe's answer while enable_model_api=false
    status, _, body = server.request("DELETE", "/models/demo", port=server.management, token="management")
    assert status == 405, (status, body)
    assert server.workers("demo")  # still registered
    assert_serves(server)


def test_loadtest_checks_every_response(server):
    result = run_load(server, "demo", clients=3, requests=4, max_seconds=300)
    assert (result["good"], result["errors"], result["lost"]) == (12, 0, 0), result["first_errors"]
    assert result["p50_ms"] > 0 and result["requests_per_s"] > 0


def test_inference_key_rotation(server):
    """docs/serving.md's key rotation recipe: /token?type=inference with the API key of key_file.json."""
    key_file = server.cwd / "key_file.json"
    keys = json.loads(key_file.read_text())
    old = keys["inference"]["key"]
    server.keys["api"] = keys["API"]["key"]
    status, _, body = server.request("GET", "/token?type=inference", port=server.management, token="api")
    assert status == 200, body
    new = json.loads(key_file.read_text())["inference"]["key"]
    assert new != old
    server.keys["inference"] = new
    assert_serves(server)
    server.keys["old"] = old
    assert server.request("POST", "/predictions/demo", JPEG, {"Content-Type": "image/jpeg"}, token="old")[0] == 400
