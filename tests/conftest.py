"""Shared fixtures: the real, verified VGG-16 weights (never a random VGG) and small images."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    from pipeline.common.image_files import skimage_photo
    path = tmp_path_factory.mktemp("style") / "coffee.png"
    Image.fromarray(skimage_photo("coffee")).save(path)
    return path
