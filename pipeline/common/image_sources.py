"""Images named on a command line or in a config: files (with a clear error), `skimage:<name>`
(an image scikit-image ships), a folder's images and the names styles go by.

`image_files` is the one lister every command that takes a folder of images uses. Used by the data
stage, training, evaluation and the offline tools; the serving core needs only `style_name`.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.common.image_codec import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, BadImageRequest, decode, resize, scaled_size


def load_image_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """(3, H, W) float RGB in [0, 1] from an image file (alpha dropped), with a clear error."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"cannot read image {path}: {e}") from None
    try:
        return decode(data, max_pixels).rgb
    except BadImageRequest as e:
        raise ValueError(f"{path}: {e}") from None



def natural_key(name: str) -> list:
    """frame2 before frame10: digit runs compare as numbers, the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def image_files(folder: str | Path, *, recursive: bool = False, natural: bool = False) -> list[Path]:
    """The image files of `folder` (by suffix, any case: IMAGE_SUFFIXES; folders and other files left
    out), sorted by path, or in natural name order (`natural`: numbered frames). `recursive`: its
    subfolders' too. FileNotFoundError for a missing folder and for one without images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    found = [p for p in (folder.rglob("*") if recursive else folder.iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not found:
        raise FileNotFoundError(f"{folder} has no images ({', '.join(IMAGE_SUFFIXES)})"
                                + (" in it or its subfolders" if recursive else ""))
    return sorted(found, key=lambda p: natural_key(p.relative_to(folder).as_posix())) if natural else sorted(found)

SKIMAGE = "skimage:"  # `skimage:<name>`: an image scikit-image ships (public domain / CC0), no file needed
NOT_IMAGES = ("download_all",)  # functions of skimage.data never called: this one downloads every data set


def skimage_photo(name: str) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array of an image scikit-image ships (greyscale ones replicated)."""
    import skimage.data

    func = getattr(skimage.data, name, None) if not name.startswith("_") and name not in NOT_IMAGES else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skimage warns about optional pooch for *other* images
            img = np.asarray(func()) if callable(func) else None
    except Exception as e:  # noqa: BLE001 - images that need a download fail offline with various errors
        raise ValueError(f"skimage:{name} cannot be loaded here ({type(e).__name__}: {e}); use one it ships, "
                         "e.g. skimage:hubble_deep_field, skimage:brick, skimage:grass, skimage:coffee") from None
    if img is None or img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"skimage:{name} is not an image scikit-image ships; e.g. skimage:hubble_deep_field, "
                         "skimage:brick, skimage:grass, skimage:gravel, skimage:immunohistochemistry, skimage:coffee")
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def load_image(spec: str | Path) -> torch.Tensor:
    """(3, H, W) float RGB in [0, 1] from a file path or `skimage:<name>`."""
    if str(spec).startswith(SKIMAGE):
        return torch.from_numpy(skimage_photo(str(spec)[len(SKIMAGE):])).permute(2, 0, 1).float().div_(255.0)
    return load_image_file(Path(spec))


def style_name(spec: str | Path) -> str:
    """The name a style goes by (run names, TensorBoard tags, `X-Style`): its file stem or skimage name."""
    return str(spec)[len(SKIMAGE):] if str(spec).startswith(SKIMAGE) else Path(spec).stem


def image_exists(spec: str | Path) -> bool:
    """Whether `load_image(spec)` can load it: a file, or a uint8 image scikit-image ships (a function of
    skimage.data that returns something else, e.g. a file name, is not a style)."""
    if str(spec).startswith(SKIMAGE):
        try:
            skimage_photo(str(spec)[len(SKIMAGE):])
        except ValueError:
            return False
        return True
    return Path(spec).is_file()


def load_style(path: str | Path, size: int | None) -> torch.Tensor:
    """A style image (a file or `skimage:<name>`) as (1, 3, H, W) in [0, 1], its long side resized
    to `size` (None: as is)."""
    img = load_image(path)
    if size is not None:
        img = resize(img, scaled_size(img.shape[1], img.shape[2], size, "long"))
    return img[None].clamp(0, 1)
