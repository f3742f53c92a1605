"""Shared helpers for the serving tests (export, handler, stylize, TorchServe); no tests here.

- `make_checkpoint`: a Lightning-style checkpoint dict around a freshly built generator.
- `shared_export`: one export per test session (every format, or the `.pt` alone), reused by every serving test file.
- `reference_output`: what a request should give back, computed without the serving code.
- `ts_request` / `run_handler`: feed a handler exactly what TorchServe's Python worker gives it
  (ts.service.Service.retrieve_data_for_inference + a real ts.context.Context and metrics cache).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.export.exporter import export_run
from pipeline.model.generators import build_generator

HPARAMS = dict(style_image="styles/mosaic.jpg", style_size=512, arch="residual", norm="instance", padding="reflect",
               upsample="nearest", width=32, n_residual=5, content_layer="relu2_2", style_weight=3e-4, content_weight=1e-5, tv_weight=1.0,
               vgg_flavour="caffe", vgg_weights=None, lr=1e-3, lr_schedule="none",
               max_nonfinite=10)


def make_checkpoint(run_dir: Path, seed: int = 0, global_step: int = 42, styles: list[str] | None = None,
                    strength: bool = False, **overrides: Any) -> Path:
    """Write run_dir/checkpoints/last.ckpt as training would (generator.* weights, no VGG); `styles`
    (names) and `strength` make a conditional generator, as multi-style / strength training does.
    The real chain (a checkpoint written by `make train`) is tested in test_multistyle_chain.py."""
    hp = {**HPARAMS, **overrides}
    if styles and "style_image" not in overrides:
        hp["style_image"] = ",".join(f"styles/{n}.jpg" for n in styles)
    if styles or strength:  # checkpoints from before multi-style have neither key
        hp["strength_control"] = strength
    torch.manual_seed(seed)
    extra = {k: hp[k] for k in ("upsample", "width", "n_residual") if k in hp} if hp["arch"] in ("residual", "compact") else {}
    if styles or strength:
        extra.update(n_styles=len(styles or [None]), strength=strength)
    generator = build_generator(hp["arch"], norm=hp["norm"], padding=hp["padding"], **extra)
    with torch.no_grad():  # move the affine norm parameters off 1/0 so they matter in comparisons
        for name, p in generator.named_parameters():
            if p.dim() == 1 or ".strength_" in name or (p.dim() == 2 and "strength_net" not in name):
                p.add_(0.1 * torch.randn_like(p))
    path = run_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"hyper_parameters": hp, "state_dict": {"generator." + k: v for k, v in generator.state_dict().items()},
            "global_step": global_step, "epoch": 0, "pytorch-lightning_version": "2.6.6"}
    if styles:
        ckpt["styles"] = list(styles)
    torch.save(ckpt, path)
    return path


# One line of Python for a subprocess: from then on importing Lightning, webdataset or torchvision
# raises ImportError, as on a serving machine that has only torch, Pillow and numpy.
BLOCK_TRAINING_DEPS = ("import sys, importlib.abc; "
                       "B = ('lightning', 'pytorch_lightning', 'lightning_fabric', 'webdataset', 'torchvision'); "
                       "F = type('Block', (importlib.abc.MetaPathFinder,), {'find_spec': staticmethod(lambda n, p=None, t=None: "
                       "(_ for _ in ()).throw(ImportError(f'blocked: {n}')) if n.split('.')[0] in B else None)}); "
                       "sys.meta_path.insert(0, F())")

_SHARED: dict[str, Path] = {}


def shared_export(tmp_path_factory: Any, formats: tuple[str, ...] = ("pt", "pt2", "onnx")) -> Path:
    """runs/demo with a checkpoint and export/{generator.<each of formats>, metadata.json}; built once per
    session and set of formats. Every format (the default) costs ~20 s on a 2-core CPU (torch.export with
    its checks 11 s, ONNX 7 s): the slow tier's; `("pt",)` (1 s) serves the unit tests whose subject is
    not the exported form. Every set holds the same checkpoint (make_checkpoint's seed 0)."""
    key = ",".join(formats)
    if key not in _SHARED:
        run = tmp_path_factory.mktemp("runs") / "demo"
        make_checkpoint(run)
        export_run(run, formats=formats)
        _SHARED[key] = run
    return _SHARED[key]


# ---- images --------------------------------------------------------------------------------

def rng_image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth-ish random uint8 image (H, W, C): noise plus gradients, like a photo more than noise."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx / max(w - 1, 1)), (yy / max(h - 1, 1)), ((xx + yy) / max(h + w - 2, 1))], -1)
    img = np.clip(base * 200 + r.normal(0, 25, (h, w, 3)), 0, 255)
    if channels == 4:
        alpha = np.clip((xx / max(w - 1, 1)) * 255, 0, 255)[..., None]
        img = np.concatenate([img, alpha], -1)
    return img.astype(np.uint8)


def encode_pil(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None, **kw: Any) -> bytes:
    im = Image.fromarray(arr)
    if mode is not None:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decode_pil(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# ---- TorchServe worker emulation -----------------------------------------------------------

def ts_request(body: bytes | None = None, *, content_type: str = "image/png", fields: dict[str, tuple[bytes, str]] | None = None,
               params: dict[str, str] | None = None, headers: dict[str, str] | None = None, rid: str = "r") -> dict[str, Any]:
    """One request as the worker receives it: parameters (query/form/body) and HTTP headers."""
    parameters = [{"name": k, "contentType": "", "value": bytearray(v.encode())} for k, v in (params or {}).items()]
    hdrs = dict(headers or {})
    if fields is not None:  # multipart: every field is a parameter with its own content type
        parameters += [{"name": k, "contentType": ct, "value": bytearray(v)} for k, (v, ct) in fields.items()]
        hdrs.setdefault("Content-Type", "multipart/form-data; boundary=x")
    elif body is not None:
        parameters.append({"name": "body", "contentType": content_type, "value": bytearray(body)})
        hdrs.setdefault("Content-Type", content_type)
    return {"requestId": rid.encode(), "parameters": parameters,
            "headers": [{"name": k.encode(), "value": v.encode()} for k, v in hdrs.items()]}


def make_context(model_dir: Path, serialized: str = "generator.pt", yaml_config: dict | None = None,
                 batch_size: int = 4, gpu: int | None = None) -> Any:
    """A real ts.context.Context with a real metrics cache, as the worker builds it (`gpu`: the worker's
    gpu_id system property, None on a CPU worker)."""
    import ts
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(config_file_path=os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml"))
    metrics.model_name = "demo"
    manifest = {"model": {"modelName": "demo", "serializedFile": serialized, "handler": "stylize_handler.py"}}
    return Context("demo", str(model_dir), manifest, batch_size, gpu, "0.12.0", metrics=metrics,
                   model_yaml_config=yaml_config or {})


def run_handler(handler: Any, context: Any, requests: list[dict[str, Any]]) -> list[tuple[int, str, bytes]]:
    """Run one batch through handler.handle like ts.service.Service.predict; returns (status, content type, body)."""
    from ts.service import Service

    headers, input_batch, req_ids = Service.retrieve_data_for_inference(requests)
    context.request_ids = req_ids
    context.request_processor = headers
    context.metrics.request_ids = req_ids
    out = handler.handle(input_batch, context)
    assert isinstance(out, list) and len(out) == len(requests)
    results = []
    for idx, body in enumerate(out):
        status, _ = context.get_response_status(idx)
        results.append((status, context.get_response_content_type(idx), bytes(body)))
    return results


def load_handler(model_dir: Path, serialized: str = "generator.pt", yaml_config: dict | None = None,
                 gpu: int | None = None) -> tuple[Any, Any]:
    from handlers.stylize_handler import StylizeHandler

    context = make_context(model_dir, serialized, yaml_config, gpu=gpu)
    handler = StylizeHandler()
    threads = torch.get_num_threads()
    try:
        handler.initialize(context)  # sets the process's torch threads, as a worker's (handler.threads)
    finally:
        torch.set_num_threads(threads)  # the test process keeps its own
    return handler, context


def reference_output(run_dir: Path, data: bytes, style: dict[str, float] | None = None, strength: float | None = None,
                     preserve_color: bool = False) -> np.ndarray:
    """What the server should answer for `data` (PNG out), computed without the serving code: Pillow decodes,
    the checkpoint's generator in its training form runs, the colours are kept by a luma shift. (H, W, 3|4)
    uint8. The served pixels may differ from it by float rounding (the inference form's regrouped arithmetic),
    ≤ 1 level."""
    from PIL import ImageOps

    from pipeline.model.checkpoint import generator_from_checkpoint, read_checkpoint

    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    generator = generator_from_checkpoint(ckpt).eval()
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    rgba = np.asarray(im.convert("RGBA"))
    x = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float()[None] / 255
    args = []
    names = ckpt.get("styles") or [None]
    if len(names) > 1 or ckpt["hyper_parameters"].get("strength_control"):
        weights = torch.tensor([[(style or {names[0]: 1.0}).get(n, 0.0) for n in names]])
        args.append(weights / weights.sum())
    if ckpt["hyper_parameters"].get("strength_control"):
        args.append(torch.tensor([1.0 if strength is None else strength]))
    with torch.no_grad():
        y = generator(x, *args)[0].clamp(0, 1).double()
    if preserve_color:
        # the photo's colours with the stylized luminance: in BT.601 YCbCr a change of Y alone moves R, G
        # and B by the same amount, so the answer is the photo shifted by the difference of the lumas
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)
        photo = x[0].double()
        y = (photo + ((y - photo) * luma).sum(0, keepdim=True)).clamp(0, 1)
    out = (y * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha and (rgba[..., 3] < 255).any():
        out = np.concatenate([out, rgba[..., 3:]], axis=2)
    return out
