"""End to end: export → archive → a real TorchServe (Java frontend + Python worker) with the repo's
config.properties (only ports and the model store changed) → HTTP requests with the token.

The server runs in its own process group, in tmp_path (key_file.json, logs/, pid file, worker
sockets all land there), and is stopped by that recorded process group id, never by name.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipeline.export.archive import archive_run
from pipeline.ops.torchserve_local import TORCHSERVE, LocalTorchServe, multipart
from serving_helpers import decode_pil, encode_pil, reference_output, rng_image, shared_export

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None or not TORCHSERVE.exists(), reason="needs Java and torchserve")]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_pil(data))


def test_torchserve_end_to_end(tmp_path_factory, tmp_path):
    run = shared_export(tmp_path_factory)
    store = tmp_path / "model_store"
    archive_run(run, store, name="demo")
    archive_run(run, store, name="batched", batch_size=4, max_batch_delay_ms=2000)
    server = LocalTorchServe(tmp_path, store)
    cfg = (tmp_path / "config.properties").read_text()
    assert "disable_token_authorization=false" in cfg and "enable_model_api=false" in cfg

    def near_reference(body: bytes, data: bytes) -> bool:
        """The served PNG against the answer computed without the serving code (Pillow + the eager generator)."""
        got, want = pixels(body).astype(int), reference_output(run, data).astype(int)
        return got.shape == want.shape and np.abs(got - want).max() <= 1

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
        assert near_reference(body, odd_jpeg)

        # PNG with alpha (multipart), greyscale PNG, JPEG out via header, WebP via /invocations query
        rgba = encode_pil(rng_image(31, 50, channels=4, seed=12))
        form, form_type = multipart("image", "cut.png", rgba, "image/png")
        status, ctype, body = server.request("POST", "/predictions/demo", form, {"Content-Type": form_type})
        assert (status, ctype) == (200, "image/png") and decode_pil(body).mode == "RGBA"
        assert near_reference(body, rgba)
        grey = encode_pil(rng_image(40, 29, seed=13), "PNG", mode="L")
        status, ctype, body = server.request("POST", "/predictions/demo", grey, {"Content-Type": "image/png"})
        assert status == 200 and decode_pil(body).size == (29, 40)
        assert near_reference(body, grey)
        status, ctype, body = server.request("POST", "/predictions/demo", odd_jpeg,
                                             {"Content-Type": "application/octet-stream", "X-Format": "jpeg", "X-Quality": "80"})
        assert (status, ctype) == (200, "image/jpeg")  # the reference encoded by Pillow at the same quality
        reference_jpeg = encode_pil(reference_output(run, odd_jpeg), "JPEG", quality=80)
        assert np.abs(pixels(body).astype(int) - pixels(reference_jpeg).astype(int)).mean() < 1
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
        assert status == 200 and near_reference(body, grey)

        # batching: 4 concurrent requests of different sizes land in one TorchServe batch (batchSize 4,
        # so the frontend sends it as soon as the 4th arrives; all 4 within maxBatchDelay 2 s)
        sizes = [(37, 53), (64, 64), (37, 53), (64, 64)]
        images = [encode_pil(rng_image(*hw, seed=20 + i)) for i, hw in enumerate(sizes)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda d: server.request("POST", "/predictions/batched", d, {"Content-Type": "image/png"}), images))
        for data, (status, ctype, body) in zip(images, results):
            assert status == 200, body[:300]
            assert near_reference(body, data)

        status, _, body = server.request("GET", "/metrics", port=server.metrics, token=None)
        assert status == 200 and b"ModelMs" in body and b"Megapixels" in body
        # the handler's BatchSize gauge (len(data) of its last call): "batched" got only these 4 requests,
        # so a last call with 4 means one call with all of them; "demo" (batchSize 1) gets one at a time
        gauges = dict(re.findall(r'^BatchSize\{ModelName="(\w+)".*\} ([0-9.]+)$', body.decode(), re.M))
        assert gauges == {"batched": "4.0", "demo": "1.0"}, gauges
        # TorchServe's BaseHandler.handle times each call; its describe API reaches the handler's describe_handle
        assert set(re.findall(r'^HandlerTime\{ModelName="(\w+)"', body.decode(), re.M)) == {"batched", "demo"}
        status, _, body = server.request("GET", "/models/demo?customized=true", port=server.management, token="management")
        custom = json.loads(body)[0]["customizedMetadata"]
        described = json.loads(custom) if isinstance(custom, str) else custom
        assert status == 200 and described["styles"] == ["mosaic"] and described["global_step"] == 42, described
        print(f"\ntorchserve: start→ready {ready_s:.1f} s, first response {first_s * 1000:.0f} ms, "
              f"test total {time.monotonic() - t0:.1f} s")
    finally:
        server.stop()
    assert server.proc.poll() is not None
