"""Shared pieces of the benchmark: machine facts, test images, the model under test, workers.

Every measured case runs in a fresh Python process (`run_worker`), so one case's peak RSS, warm
caches or allocator state never leak into the next one.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"64": (64, 64), "256": (256, 256), "512": (512, 512), "1080p": (1080, 1920)}


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU (if any), library versions: what a result is only valid for."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gb": mem_gb,
        "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags],
        "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
        "mkldnn": torch.backends.mkldnn.is_available(), "platform": platform.platform(),
    }


def machine_slug(info: dict[str, Any]) -> str:
    """A file-name-safe machine name: e.g. `amd-epyc-2cpu` or `nvidia-h100-...`."""
    name = (info["gpu"] or info["cpu"]).lower()
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{slug}-{info['logical_cpus']}cpu"


def photo(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A deterministic photo-like batch in [0, 1]: smooth gradients plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w)
    phase = torch.rand(batch, 3, 1, 1, generator=g) * 6.28
    base = 0.5 + 0.35 * torch.sin(6.0 * xx + 4.0 * yy + phase)
    return (base + 0.08 * torch.randn(batch, 3, h, w, generator=g)).clamp(0, 1).contiguous()


def photo_uint8(h: int, w: int, seed: int = 0) -> np.ndarray:
    """`photo` as one (h, w, 3) uint8 RGB image, as a decoder hands it over."""
    return (photo(1, h, w, seed=seed)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def photo_jpeg(h: int, w: int, seed: int = 0) -> bytes:
    """`photo_uint8` as JPEG bytes (quality 92), as a client uploads a photo."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photo_uint8(h, w, seed)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def generator_gflop(h: int, w: int) -> float:
    """Multiply-adds ×2 of the residual generator's convolutions for one H×W image (padded to ×4)."""
    h, w = -(-max(h, 16) // 4) * 4, -(-max(w, 16) // 4) * 4
    full, half, quarter = h * w, h * w / 4, h * w / 16
    macs = (full * 32 * 3 * 81 + half * 64 * 32 * 9 + quarter * 128 * 64 * 9 + 10 * quarter * 128 * 128 * 9
            + half * 64 * 128 * 9 + full * 32 * 64 * 9 + full * 3 * 32 * 81)
    return 2 * macs / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


MODEL_KINDS = ("preset", "plain")  # what `make train` builds today (one style + strength control), and the plain one


def make_run(run_dir: Path, seed: int = 0, kind: str = "preset", width: int = 32,
             formats: tuple[str, ...] = ("pt", "pt2", "onnx")) -> Path:
    """A run folder with a checkpoint of a seeded generator and its export (.pt, .pt2, .onnx): the same
    weights for every case and for the reference. `preset`: the generator the presets train (one style,
    the strength control: conditional norms and the strength path); `plain`: without the control, the
    paper's and the reference's architecture. `width`: the base channels (the `widths` section); `formats`:
    the exported files. Every parameter is moved off its initial value (norm
    affines off 1/0, the strength path off 0) so that each one matters."""
    from pipeline.export.exporter import export_run
    from pipeline.model.generators import build_generator

    if kind not in MODEL_KINDS:
        raise ValueError(f"kind={kind!r}: choose {' or '.join(MODEL_KINDS)}")
    torch.manual_seed(seed)
    generator = build_generator("residual", norm="instance", padding="reflect", upsample="nearest",
                                strength=kind == "preset", width=width)
    with torch.no_grad():
        for name, p in generator.named_parameters():
            if p.dim() == 1 or "strength" in name:
                p.add_(0.1 * torch.randn_like(p))
    hp = {"arch": "residual", "norm": "instance", "padding": "reflect", "upsample": "nearest",
          "style_image": "bench.png", "vgg_flavour": "caffe", "strength_control": kind == "preset", "width": width}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": hp, "state_dict": {"generator." + k: v for k, v in generator.state_dict().items()},
                "global_step": 0, "epoch": 0}, ckpt)
    export_run(run_dir, formats=formats)
    return run_dir


def run_worker(module: str, args: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m module args` in a fresh process; its last stdout line is a JSON result."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"error": f"{module} {' '.join(args)} exited {proc.returncode}: {tail}"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"{module} {' '.join(args)} printed no result: {proc.stdout[-1000:]} {proc.stderr[-1000:]}"}
    result = json.loads(lines[-1])
    result["process_s"] = round(time.monotonic() - start, 1)
    return result
