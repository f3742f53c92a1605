"""GPU serving policy on the CPU: OOM → one tiled retry, a poisoned CUDA context ends the worker, the
memory cap from a GPU's free memory, the archive's GPU options, precision (bf16 close to fp32, tiled
keeps whole-image statistics)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from handlers.stylize_handler import WORKER_RESTART_EXIT
from pipeline.export.archive import model_config
from pipeline.common.image_codec import DecodedImage
from pipeline.serve.inference import run_batch
from pipeline.serve.limits import device_memory_cap_mb, workers_per_device
from pipeline.serve.model_io import load_model
from serving_helpers import decode_pil, encode_pil, load_handler, rng_image, run_handler, shared_export, ts_request


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A handler on the shared .pt export: the policy under test is the handler's, whatever the form."""
    return load_handler(shared_export(tmp_path_factory, formats=("pt",)) / "export")


@pytest.fixture(scope="module")
def served_pt2(tmp_path_factory):
    """A handler on the .pt2 export, what the archive serves (a full export, ~20 s: the slow tier's)."""
    return load_handler(shared_export(tmp_path_factory) / "export", serialized="generator.pt2")


class _Failing:
    """The served model, raising `error` when called whole (the tiled path runs its eager generator)."""

    def __init__(self, model, error):
        self.model, self.error, self.calls = model, error, 0
        self.instyle_controls = model.instyle_controls
        self.__dict__["instyle_generator"] = model.instyle_generator

    def __call__(self, *args):
        self.calls += 1
        raise self.error


@pytest.mark.slow
def test_out_of_memory_is_retried_in_tiles_with_the_same_pixels(served_pt2):
    handler, context = served_pt2
    req = [ts_request(encode_pil(rng_image(40, 56)))]
    (ok,) = run_handler(handler, context, req)
    original = handler.service.model
    handler.service.model = failing = _Failing(original, torch.OutOfMemoryError("CUDA out of memory"))
    try:
        (retried,) = run_handler(handler, context, req)
    finally:
        handler.service.model = original
    assert failing.calls == 1 and retried[0] == ok[0] == 200
    a, b = np.asarray(decode_pil(ok[2])).astype(int), np.asarray(decode_pil(retried[2])).astype(int)
    assert np.abs(a - b).max() <= 1


def test_a_poisoned_cuda_context_ends_the_worker(served):
    handler, context = served
    original = handler.service.model
    handler.service.model = _Failing(original, torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    try:
        with pytest.raises(SystemExit) as exited:
            run_handler(handler, context, [ts_request(encode_pil(rng_image(8, 8)))])
    finally:
        handler.service.model = original
    assert exited.value.code == WORKER_RESTART_EXIT


def test_gpu_memory_cap_is_the_workers_share_of_free_memory():
    assert device_memory_cap_mb(80 * 2**30, 4) == int(80 * 1024 * 0.8 / 4)
    assert workers_per_device({"maxWorkers": 4, "deviceIds": [0, 1]}, 8) == 2
    assert workers_per_device({"minWorkers": 3}, 2) == 2 and workers_per_device({}, 0) == 1
    with pytest.raises(ValueError, match="workers"):
        device_memory_cap_mb(2**30, 0)


def test_archive_config_for_gpu_workers_and_batching():
    config = yaml.safe_load(model_config(8, 20, 300, 4096, 50_000_000, workers=2, gpu=True, device_ids=[0, 1],
                                         precision="bf16"))
    assert config == {"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 20, "responseTimeout": 300,
                      "deviceType": "gpu", "deviceIds": [0, 1],
                      "handler": {"max_side": 4096, "max_pixels": 50_000_000, "precision": "bf16"}}
    cpu = yaml.safe_load(model_config(1, 50, 300, 4096, 10, 512))
    assert cpu["deviceType"] == "cpu" and cpu["minWorkers"] == cpu["maxWorkers"] == 2 and "threads" not in cpu["handler"]
    assert "minWorkers" not in yaml.safe_load(model_config(4, 50, 300, 4096, 10, 512))  # batching: one worker
    assert yaml.safe_load(model_config(1, 50, 300, 4096, 10, workers=3, threads=1))["handler"]["threads"] == 1
    for bad in ({"precision": "fp8"}, {"device_ids": [0]}, {"workers": 0}, {"threads": 0}):
        with pytest.raises(ValueError):
            model_config(1, 50, 300, 4096, 10, **bad)


@pytest.mark.slow
def test_handler_precision_setting(tmp_path_factory, monkeypatch, auto_precision):
    export = shared_export(tmp_path_factory) / "export"
    handler, _ = load_handler(export, "generator.pt2", {"handler": {"precision": "bf16"}})
    assert handler.service.precision == handler.service.precision_note == "bf16"
    handler, _ = load_handler(export, "generator.pt2")  # the archive's default
    assert (handler.service.precision, handler.service.precision_note) == (auto_precision, f"{auto_precision} (auto)")
    monkeypatch.setenv("INSTYLE_PRECISION", "fp32")  # the operator's choice wins over the archive's
    handler, _ = load_handler(export, "generator.pt2", {"handler": {"precision": "bf16"}})
    assert handler.service.precision == "fp32"
    monkeypatch.setenv("INSTYLE_PRECISION", "fp64")
    with pytest.raises(ValueError, match="precision"):
        load_handler(export, "generator.pt2")


@pytest.mark.parametrize("form", ["checkpoints/last.ckpt", pytest.param("export/generator.pt2", marks=pytest.mark.slow)],
                         ids=["ckpt", "pt2"])
def test_bf16_is_close_to_fp32_and_tiles_with_whole_image_statistics(tmp_path_factory, form):
    """The two forms bf16 runs in (TorchScript is fp32 only): the eager generator and the .pt2 graph."""
    run = shared_export(tmp_path_factory, **({} if form.endswith(".pt2") else {"formats": ("pt",)}))
    model, _ = load_model(run / form)
    image = [DecodedImage(torch.from_numpy(rng_image(96, 136)).permute(2, 0, 1).contiguous(), None)]
    levels = {p: (run_batch(model, image, precision=p)[0] * 255).round() for p in ("fp32", "bf16")}
    diff = (levels["fp32"] - levels["bf16"]).abs()
    # bf16 convolutions only: an untrained model on noise, 3 levels at most here; docs/serving.md has photo figures
    assert 0 < diff.max() <= 4 and diff.mean() < 0.5
    tiled = (run_batch(model, image, max_memory_mb=1, precision="bf16", tiled=True)[0] * 255).round()
    assert (tiled - levels["bf16"]).abs().mean() < 1.0
