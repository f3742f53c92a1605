"""Shared fixtures: the real, verified VGG-16 weights (never a random VGG) and small images."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import torch

if TYPE_CHECKING:
    from pipeline.train.module import StyleTransferModule

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "assets"


def _weights_path() -> Path:
    # `make install` converts them into data/weights; VGG_WEIGHTS may point at another verified copy.
    return Path(os.environ.get("VGG_WEIGHTS", ROOT / "data/weights/vgg16_imagenet_caffe_relu4_3.pth"))


@pytest.fixture(scope="session")
def vgg_weights() -> Path:
    path = _weights_path()
    if not path.exists():
        pytest.fail(f"VGG-16 weights missing at {path}: run `make install` first (it fetches and converts them)")
    os.environ["VGG_WEIGHTS"] = str(path.resolve())  # subprocesses (CLI runs) use the same file
    return path


@pytest.fixture(scope="session")
def style_image(tmp_path_factory) -> Path:
    """A real painting when ../shared is there, else a public-domain photo scikit-image ships."""
    shared = SHARED / "styles" / "starry_night.jpg"
    if shared.exists():
        return shared
    from PIL import Image
    from pipeline.common.image_sources import skimage_photo
    path = tmp_path_factory.mktemp("style") / "coffee.png"
    Image.fromarray(skimage_photo("coffee")).save(path)
    return path


# ---- small training modules (the real VGG-16), built once per test file that uses them

@pytest.fixture(scope="module")
def single(style_image: Path, vgg_weights: Path) -> StyleTransferModule:
    """One style, no strength control: the plain generator (small, for speed)."""
    from pipeline.train.module import StyleTransferModule

    torch.manual_seed(0)
    return StyleTransferModule(str(style_image), style_size=64, width=8, n_residual=1, vgg_weights=str(vgg_weights))


@pytest.fixture(scope="module")
def duo(style_image: Path, vgg_weights: Path) -> StyleTransferModule:
    """Two styles (a file and a scikit-image texture) with the strength control, the photo term and
    the stability term on. Each style's norm parameters are moved off their common initial 1/0, as
    training would, so the two styles give different outputs."""
    from pipeline.train.module import StyleTransferModule

    torch.manual_seed(0)
    module = StyleTransferModule(f"{style_image},skimage:brick", style_size=64, width=8, n_residual=1,
                                 strength_control=True, stability_weight=1.0, photo_weight=2.0,
                                 vgg_weights=str(vgg_weights))
    with torch.no_grad():
        for name, p in module.generator.named_parameters():
            if p.dim() == 2 and p.shape[0] == 2 and name.rsplit(".", 1)[1] in ("weight", "bias") \
                    and "strength_net" not in name:
                p.add_(0.2 * torch.randn_like(p))
    return module


@pytest.fixture(scope="session", autouse=True)
def fp32_unless_asked() -> Iterator[None]:
    """The suite compares served pixels with independent fp32 computations, so `precision: auto` is
    pinned to fp32 ($INSTYLE_PRECISION, inherited by TorchServe workers and subprocesses). The tests of
    the default itself (`auto_precision`: bf16 on a CPU with native bf16) lift the pin."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INSTYLE_PRECISION", "fp32")
        yield


@pytest.fixture
def auto_precision(monkeypatch: pytest.MonkeyPatch) -> str:
    """`precision: auto` as users get it: the pin lifted; returns what auto resolves to on this CPU."""
    from pipeline.serve.precision import resolve_precision

    monkeypatch.delenv("INSTYLE_PRECISION")
    return resolve_precision("auto", "cpu")


@pytest.fixture
def rng() -> Iterator[None]:
    """Tests that seed torch's global generator leave it as they found it."""
    with torch.random.fork_rng():
        yield


@pytest.fixture
def no_allocator_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands call reuse_freed_memory (process-wide mallopt): keep it off in the test process."""
    monkeypatch.setenv("INSTYLE_REUSE_FREED_MEMORY", "0")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding shards/ (train and val shards of the built-in sample photos, 128 px) for tiny real
    fits (tests/train_helpers.py's `fit`), which write their runs beside it."""
    from pipeline.data.builtin_photos import build_sample_shards

    root = tmp_path_factory.mktemp("train")
    build_sample_shards(root / "shards", max_side=128)
    return root


@pytest.fixture(scope="module")
def tiny_trio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-style checkpoint (styles a, b, c) with the strength control (width 8, one residual block)."""
    from serving_helpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("runs") / "trio", styles=["a", "b", "c"], strength=True, width=8,
                           n_residual=1)


@pytest.fixture(scope="module")
def tiny_trio_generator(tiny_trio: Path) -> torch.nn.Module:
    """`tiny_trio`'s generator in its training form, rebuilt from the checkpoint (not the tools' loader)."""
    from pipeline.model.checkpoint import generator_from_checkpoint, read_checkpoint

    return generator_from_checkpoint(read_checkpoint(tiny_trio)).eval()
