"""handlers/stylize_handler.py with TorchServe's own Context, RequestProcessor and metrics cache,
fed exactly the way ts.service.Service.predict feeds a handler (no Java involved)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ts.metrics.metric_type_enum import MetricTypes

from handlers.stylize_handler import split_request
from pipeline.common.image_codec import BadImageRequest
from serving_helpers import decode_pil, encode_pil, load_handler, rng_image, run_handler, shared_export, ts_request


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """The shared .pt export: the handler's own logic (the .pt2 form: test_pt2_model_gives_the_same_pixels)."""
    return shared_export(tmp_path_factory, formats=("pt",)) / "export"


@pytest.fixture(scope="module")
def served(export_dir):
    return load_handler(export_dir)


def _ok(result, content_type="image/png"):
    status, ctype, body = result
    assert status == 200, body[:300]
    assert ctype == content_type
    return decode_pil(body)


def _error(result, status):
    got, ctype, body = result
    assert got == status and ctype == "application/json", (got, ctype, body[:300])
    payload = json.loads(body)
    assert payload["status"] == status and payload["error"]
    return payload["error"]


def test_torchserve_finds_the_one_handler_class():
    """TorchServe's loader refuses a handler module with more than one top-level class."""
    from ts.utils.util import list_classes_from_module

    import handlers.stylize_handler as module
    assert list_classes_from_module(module) == [module.StylizeHandler]


def test_initialize_reads_model_metadata_and_limits(served):
    handler, _ = served
    assert handler.initialized and handler.service.metadata["global_step"] == 42
    assert (handler.service.max_side, handler.service.max_pixels) == (4096, 50_000_000)


def test_raw_body_png_out_same_size(served):
    handler, context = served
    (res,) = run_handler(handler, context, [ts_request(encode_pil(rng_image(37, 53)))])
    out = _ok(res)
    assert out.size == (53, 37) and out.mode == "RGB"
    cache = context.metrics.cache
    assert {"DecodeMs", "ModelMs", "EncodeMs"} <= set(cache[MetricTypes.GAUGE])
    assert "Megapixels" in cache[MetricTypes.COUNTER]


def test_multipart_field_and_header_options(served):
    handler, context = served
    jpeg = encode_pil(rng_image(40, 30), "JPEG", quality=90)
    res = run_handler(handler, context, [
        ts_request(fields={"image": (jpeg, "image/jpeg")}, headers={"X-Format": "jpeg", "X-Quality": "70"}),
        ts_request(fields={"file": (jpeg, "image/jpeg"), "format": (b"webp", "")}),  # form field option
        ts_request(jpeg, content_type="application/octet-stream", params={"format": "webp"},
                   headers={"X-Format": "jpeg"}),  # query/form beats header
    ])
    assert _ok(res[0], "image/jpeg").size == (30, 40)
    assert _ok(res[1], "image/webp").size == (30, 40)
    assert _ok(res[2], "image/webp").size == (30, 40)


def test_alpha_png_round_trip_and_jpeg_composite(served):
    handler, context = served
    rgba = rng_image(33, 21, channels=4)
    res = run_handler(handler, context, [ts_request(encode_pil(rgba)),
                                         ts_request(encode_pil(rgba), headers={"X-Format": "jpeg"})])
    png = _ok(res[0])
    assert png.mode == "RGBA" and np.array_equal(np.asarray(png)[..., 3], rgba[..., 3])
    assert _ok(res[1], "image/jpeg").mode == "RGB"


def test_max_side_downscales_and_is_capped(export_dir):
    handler, context = load_handler(export_dir, yaml_config={"handler": {"max_side": 64}})
    big = encode_pil(rng_image(100, 150))
    res = run_handler(handler, context, [ts_request(big), ts_request(big, headers={"X-Max-Side": "30"}),
                                         ts_request(big, headers={"X-Max-Side": "1000"})])
    assert _ok(res[0]).size == (64, 43)  # server cap
    assert _ok(res[1]).size == (30, 20)  # client asks for less
    assert _ok(res[2]).size == (64, 43)  # client cannot exceed the cap


def test_env_overrides_model_config(export_dir, monkeypatch):
    monkeypatch.setenv("INSTYLE_MAX_PIXELS", "1000")
    handler, context = load_handler(export_dir, yaml_config={"handler": {"max_pixels": 10**9}})
    (res,) = run_handler(handler, context, [ts_request(encode_pil(rng_image(40, 40)))])
    assert "MP limit" in _error(res, 413)


def test_cpu_worker_threads_share_the_cores(export_dir, monkeypatch):
    """A CPU worker runs its share of the cores (at least one): TorchServe's workers of the model split them;
    the handler's `threads` and $INSTYLE_THREADS (first) override; a bad value fails at load."""
    import os

    from handlers.stylize_handler import StylizeHandler
    from serving_helpers import make_context

    cpus = len(os.sched_getaffinity(0))
    assert load_handler(export_dir)[0].service.threads == cpus
    assert load_handler(export_dir, yaml_config={"minWorkers": 2, "maxWorkers": 2})[0].service.threads == max(1, cpus // 2)
    assert load_handler(export_dir, yaml_config={"maxWorkers": 4 * cpus})[0].service.threads == 1
    assert load_handler(export_dir, yaml_config={"handler": {"threads": 3}})[0].service.threads == 3
    monkeypatch.setenv("INSTYLE_THREADS", "1")
    before = torch.get_num_threads()
    handler = StylizeHandler()
    try:
        handler.initialize(make_context(export_dir, "generator.pt", {"handler": {"threads": 3}}))
        assert handler.service.threads == torch.get_num_threads() == 1  # what the worker's torch runs
    finally:
        torch.set_num_threads(before)
    monkeypatch.delenv("INSTYLE_THREADS")
    with pytest.raises(ValueError, match="threads"):
        load_handler(export_dir, yaml_config={"handler": {"threads": "lots"}})


def test_memory_cap_from_model_config_tiles_with_the_same_pixels(export_dir, served, monkeypatch):
    """handler.service.max_memory_mb (model-config.yaml) makes the handler stylize in tiles: same pixels."""
    from pipeline.serve import inference, limits

    calls = []
    real = inference.stylize_tiled
    monkeypatch.setattr(inference, "stylize_tiled", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    capped, capped_ctx = load_handler(export_dir, yaml_config={"handler": {"max_memory_mb": 1}})
    assert capped.service.max_memory_mb == 1 and served[0].service.max_memory_mb == limits.DEFAULT_MAX_MEMORY_MB
    body = encode_pil(rng_image(120, 170, seed=11))
    (tiled,) = run_handler(capped, capped_ctx, [ts_request(body)])
    assert calls == [(1, 3, 120, 170)]
    (whole,) = run_handler(served[0], served[1], [ts_request(body)])
    assert len(calls) == 1  # the default cap: one untiled call
    diff = np.abs(np.asarray(_ok(tiled)).astype(int) - np.asarray(_ok(whole)).astype(int)).max()
    assert diff <= 1  # 8-bit rounding of values equal to ~1e-6


def test_bad_memory_cap_fails_at_load(export_dir):
    with pytest.raises(ValueError, match="max_memory_mb"):
        load_handler(export_dir, yaml_config={"handler": {"max_memory_mb": "lots"}})


class ShapeSpy(torch.nn.Module):
    """Wraps the served model and records the batch shapes it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.shapes = model, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def test_batch_with_different_sizes_is_grouped_not_padded(served, caplog):
    handler, context = served
    caplog.set_level("INFO", logger="ts.metrics")  # TorchServe's metrics are log lines
    a1, b, a2 = rng_image(37, 53, seed=1), rng_image(64, 64, seed=2), rng_image(37, 53, seed=3)
    reqs = [ts_request(encode_pil(x), rid=f"r{i}") for i, x in enumerate([a1, b, a2])]
    spy = ShapeSpy(handler.service.model)
    original, handler.service.model = handler.service.model, spy
    try:
        batched = run_handler(handler, context, reqs)
    finally:
        handler.service.model = original
    assert sorted(spy.shapes) == [(1, 3, 64, 64), (2, 3, 37, 53)]
    # the BatchSize metric (what tests/test_serving_torchserve.py reads back from a real server)
    emitted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]BatchSize.")]
    assert len(emitted) == 1 and emitted[0].split("|")[0].endswith(":3"), emitted
    # TorchServe's BaseHandler.handle ran the stages and timed the whole call (all three requests), once
    timed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]HandlerTime.")]
    assert len(timed) == 1 and timed[0].endswith(",r0,r1,r2"), timed
    alone = [run_handler(handler, context, [r])[0] for r in reqs]
    for (s1, c1, body_b), (s2, c2, body_a), size in zip(batched, alone, [(53, 37), (64, 64), (53, 37)]):
        img_b, img_a = np.asarray(_ok((s1, c1, body_b))), np.asarray(_ok((s2, c2, body_a)))
        assert img_b.shape[:2] == size[::-1]
        # instance norm: an image's result does not depend on its batch-mates (±1 for float order)
        assert np.abs(img_b.astype(int) - img_a.astype(int)).max() <= 1


def test_bad_input_is_a_4xx_json_and_the_next_request_works(served):
    handler, context = served
    good = encode_pil(rng_image(20, 24))
    res = run_handler(handler, context, [
        ts_request(b"not an image at all"),
        ts_request(good),
        ts_request(b""),
        ts_request(good, params={"format": "gif"}),
        ts_request(good, params={"fromat": "jpeg"}),
        ts_request(good, headers={"X-Quality": "0", "X-Format": "jpeg"}),
        ts_request(good, content_type="application/x-www-form-urlencoded"),
    ])
    assert "cannot decode" in _error(res[0], 400)
    assert _ok(res[1]).size == (24, 20)
    assert "empty request body" in _error(res[2], 400)
    assert "format='gif'" in _error(res[3], 400)
    assert "unknown parameter(s) fromat" in _error(res[4], 400)
    assert "quality" in _error(res[5], 400)
    assert "x-www-form-urlencoded" in _error(res[6], 415)
    assert context.metrics.cache[MetricTypes.COUNTER]["BadRequests"]
    (after,) = run_handler(handler, context, [ts_request(good)])
    assert _ok(after).size == (24, 20)


def test_describe_api_gives_the_styles_options_precision_and_threads(served, export_dir):
    """`GET /models/NAME?customized=true` reaches the worker as a request with the header describe=True."""
    from ts.service import Service

    handler, context = served
    headers, batch, _ = Service.retrieve_data_for_inference([ts_request(b"", headers={"describe": "True"})])
    context.request_processor = headers
    (out,) = handler.handle(batch, context)
    described = json.loads(out)
    meta = json.loads((export_dir / "metadata.json").read_text())
    assert described["styles"] == ["mosaic"] and described["default_style"] == "mosaic"  # HPARAMS' style image
    assert described["strength_control"] is False and described["global_step"] == meta["global_step"] == 42
    assert described["options"] == ["format", "quality", "max_side", "preserve_color", "style", "strength"]
    assert (described["precision"], described["threads"]) == (handler.service.precision_note, handler.service.threads)


def test_explanations_api_answers_like_predictions(served):
    handler, context = served
    body = encode_pil(rng_image(21, 34, seed=5))
    (predicted,) = run_handler(handler, context, [ts_request(body)])
    explained, bad = run_handler(handler, context, [ts_request(body, headers={"explain": "True"}),
                                                    ts_request(b"not an image")])
    assert _ok(explained).size == (34, 21) and explained[2] == predicted[2]
    assert "cannot decode" in _error(bad, 400)


def test_split_request_rules():
    assert split_request({"body": b"x"}, {})[0] == b"x"
    assert split_request({"data": bytearray(b"y"), "model_name": b"demo"}, {}) == (b"y", {})
    assert split_request({"upload": b"z", "quality": b"5"}, {"X-Max-Side": "9", "x-format": "jpeg",
                                                               "upload": {"content-type": "image/png"}}) == (
        b"z", {"format": "jpeg", "max_side": "9", "quality": "5"})
    for row, status, words in [({}, 400, "no image"), ({"a": b"1", "b": b"2"}, 400, "several fields"),
                               ({"body": "text"}, 415, "text or JSON"), ({"body": {"k": 1}}, 415, "text or JSON")]:
        with pytest.raises(BadImageRequest) as e:
            split_request(row, {})
        assert e.value.status == status and words in str(e.value)


@pytest.mark.slow
def test_pt2_model_gives_the_same_pixels(tmp_path_factory):
    export_dir = shared_export(tmp_path_factory) / "export"  # every format
    handler, context = load_handler(export_dir)
    handler2, context2 = load_handler(export_dir, serialized="generator.pt2")
    req = [ts_request(encode_pil(rng_image(29, 45, channels=4)))]
    a = np.asarray(_ok(run_handler(handler, context, req)[0]))
    b = np.asarray(_ok(run_handler(handler2, context2, req)[0]))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_inference_failure_is_reported_per_request(served):
    handler, context = served

    def broken(x):
        raise RuntimeError("boom")

    original, handler.service.model = handler.service.model, broken
    try:
        (res,) = run_handler(handler, context, [ts_request(encode_pil(rng_image(8, 8)))])
    finally:
        handler.service.model = original
    assert "inference failed" in _error(res, 500)


@pytest.mark.parametrize("error, status", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 507),
    (MemoryError(), 507),
    (RuntimeError("expected memory format channels_last"), 500),  # says "memory", is not out of memory
])
def test_out_of_memory_is_told_by_the_exception_type(served, error, status):
    handler, context = served

    def failing(x):
        raise error

    original, handler.service.model = handler.service.model, failing
    try:
        (res,) = run_handler(handler, context, [ts_request(encode_pil(rng_image(8, 8)))])
    finally:
        handler.service.model = original
    message = _error(res, status)
    assert ("too large for this server's memory" in message) == (status == 507), message


def grpc_request(fields: dict[str, bytes], rid: str = "g") -> dict:
    """A request as TorchServe's gRPC path hands it to the worker: the `input` map's entries as
    parameters with an empty content type, and no request headers at all."""
    return {"requestId": rid.encode(), "headers": [],
            "parameters": [{"name": k, "contentType": "", "value": bytearray(v)} for k, v in fields.items()]}


def test_a_failed_grpc_request_alone_in_its_batch_raises_the_status(served):
    from ts.utils.util import PredictionException

    handler, context = served
    photo = encode_pil(rng_image(20, 30, seed=40))
    assert _ok(run_handler(handler, context, [grpc_request({"data": photo, "format": b"jpeg"})])[0], "image/jpeg")
    with pytest.raises(PredictionException) as info:
        run_handler(handler, context, [grpc_request({"data": b"not an image"})])
    assert info.value.error_code == 400 and "cannot decode" in json.loads(info.value.message)["error"]
    # over HTTP, or batched with others, the failed request gets its own 4xx and JSON instead
    _error(run_handler(handler, context, [ts_request(b"not an image")])[0], 400)
    results = run_handler(handler, context, [grpc_request({"data": b"not an image"}, "a"), grpc_request({"data": photo}, "b")])
    _error(results[0], 400)
    _ok(results[1])
