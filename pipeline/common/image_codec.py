"""Pure image decoding, resizing and encoding: the one implementation every stage uses (the
TorchServe handler, the offline tools, training, evaluation).

bytes → `decode` → `DecodedImage` (RGB as decoded, 8 bit, + optional alpha) → `limit_side` →
model → `encode` → bytes. Nothing here touches a model, a file system or a server, so the
server and `python -m pipeline stylize` produce the same pixels by construction.

Alpha: the RGB channels are stylized as stored (not composited), and the original alpha is
put back on PNG/WebP output, so a cut-out stays a cut-out. JPEG has no alpha: the stylized
RGB is composited over white.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
FORMAT_ALIASES = {"jpg": "jpeg"}
DEFAULT_MAX_PIXELS = 50_000_000  # decompression-bomb cap, checked before any pixel is decoded
# The file suffixes `decode` reads: the one list every command that takes a folder of images uses.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


class BadImageRequest(ValueError):
    """A client error: the message names the problem; `status` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class DecodedImage:
    """An image's RGB `pixels` (3, H, W): uint8 as decoded, or float32 in [0, 1] once resized (or made
    from floats), and its `alpha` (1, H, W) float32 in [0, 1], or None when opaque.

    Decoded images stay 8-bit until `model_input` converts them where the model runs: a quarter of the
    bytes cross to an accelerator, and the conversion is the device's work."""

    __slots__ = ("pixels", "alpha")

    def __init__(self, rgb: torch.Tensor, alpha: torch.Tensor | None):
        if rgb.dtype not in (torch.uint8, torch.float32) or rgb.dim() != 3:
            raise ValueError(f"RGB pixels must be (3, H, W) uint8 or float32, got {rgb.dtype} {tuple(rgb.shape)}")
        self.pixels, self.alpha = rgb, alpha

    @property
    def rgb(self) -> torch.Tensor:
        """(3, H, W) float32 in [0, 1] on the CPU."""
        return model_input(self.pixels)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


def model_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float32 in [0, 1] (on their device); float pixels are returned as they are."""
    return pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode JPEG/PNG/WebP/BMP/GIF/TIFF bytes: EXIF orientation applied, first frame of an
    animation, grey/palette/CMYK/16-bit converted to RGB, alpha kept apart."""
    if not data:
        raise BadImageRequest("empty request body: send the image bytes (raw body or a multipart field)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = _open_header(data)
            w, h = im.size  # header only: nothing decoded yet
            if w * h > max_pixels:
                raise BadImageRequest(f"image is {w}×{h} = {w * h / 1e6:.1f} MP, over the {max_pixels / 1e6:.1f} MP limit", 413)
            if w < 1 or h < 1:
                raise BadImageRequest(f"image has no pixels ({w}×{h})")
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            im.load()
            # Mode conversion inside the try: exotic modes PIL cannot convert are a client error too.
            return _to_tensors(im)
    except (BadImageRequest, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageRequest(f"image refused as a decompression bomb: {e}", 413) from None
    except UnidentifiedImageError:  # its message is an object repr; say what we looked for instead
        raise BadImageRequest("cannot decode the image: the body is not a JPEG, PNG, WebP, BMP, GIF or TIFF file "
                              "(or its header is invalid, e.g. 0×0 pixels)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken input
        raise BadImageRequest(f"cannot decode the image ({type(e).__name__}: {e}); send JPEG, PNG, WebP or BMP") from None


_PIL_LIMIT_LOCK = threading.Lock()


def _open_header(data: bytes) -> Image.Image:
    """Image.open (reads the header only) with PIL's fixed 89 MP bomb check off: our own,
    configurable `max_pixels` cap decides, right after, still before any pixel is decoded.
    (PIL's limit is a module global; the lock keeps the switch away from concurrent decodes.)"""
    with _PIL_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_tensors(im: Image.Image) -> DecodedImage:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit integer grey: scale to 8 bit, not clip
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8), mode="L")
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    rgba = torch.from_numpy(np.asarray(im.convert("RGBA" if has_alpha else "RGB")).copy()).permute(2, 0, 1)
    alpha = rgba[3:4].float().div_(255.0) if has_alpha else None
    if alpha is not None and bool((alpha == 1).all()):
        alpha = None  # fully opaque: no alpha to carry
    return DecodedImage(rgb=rgba[:3].contiguous(), alpha=alpha)


def scaled_size(h: int, w: int, side: int, which: str = "long") -> tuple[int, int]:
    """(h, w) scaled so the `long` (or `short`) side is `side`, keeping the aspect ratio, each ≥ 1."""
    scale = side / (max(h, w) if which == "long" else min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) in [0, 1] → `size` = (h, w), antialiased bilinear, clamped to [0, 1].

    The one resize of the project's images (photos, style images, previews). It is what
    torchvision's `resize(antialias=True)` computes on tensors, written with torch alone because
    this package is bundled into the `.mar` without torchvision."""
    x = t[None] if t.dim() == 3 else t
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return y[0] if t.dim() == 3 else y


def resize_short(img: torch.Tensor, short: int) -> torch.Tensor:
    """An image tensor resized so its short side is `short` (up or down)."""
    return resize(img, scaled_size(img.shape[-2], img.shape[-1], short, "short"))


def limit_side(img: DecodedImage, max_side: int | None) -> DecodedImage:
    """Downscale (never upscale) so the longer side is at most `max_side`, keeping the aspect ratio."""
    h, w = img.size
    if max_side is None or max(h, w) <= max_side:
        return img
    size = scaled_size(h, w, max_side, "long")
    return DecodedImage(rgb=resize(img.rgb, size), alpha=None if img.alpha is None else resize(img.alpha, size))


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] → (H, W, C) uint8, rounded (not truncated)."""
    return t.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


# zlib level of PNG answers ($INSTYLE_PNG_LEVEL, 0..9, else 1). A stylized photo is brush texture that deflate
# barely shrinks: on a 512² answer level 1 wrote 14 % more bytes than Pillow's default 6 in a quarter of the
# time (28 vs 114 ms, one thread; docs/serving.md#png-level), time the server's two cores otherwise give
# the model. A deployment that pays for bytes more than for CPU sets 6 or 9. At level 1 the deflate strategy is
# run-length (zlib's Z_RLE, "designed ... for PNG image data"): on 8 stylized 512² answers it took 28 ms for
# 533 kB against 47 ms for 571 kB with zlib's default strategy (benchmarks/png.py, in commit 5148477). Higher levels keep
# the default strategy, whose longer matches are what an operator asking for fewer bytes wants on smooth images.
ENV_PNG_LEVEL = "INSTYLE_PNG_LEVEL"


def png_level() -> int:
    """The PNG zlib level: $INSTYLE_PNG_LEVEL (0..9), else 1; a clear error for anything else."""
    text = os.environ.get(ENV_PNG_LEVEL, "1").strip()
    if not text.isdigit() or not 0 <= int(text) <= 9:
        raise ValueError(f"${ENV_PNG_LEVEL}={text!r}: give a zlib level 0..9 (1: fastest with compression)")
    return int(text)


def encode(rgb: torch.Tensor, alpha: torch.Tensor | None, fmt: str = "png", quality: int = 90) -> tuple[bytes, str]:
    """Encode a stylized (3, H, W) image; returns (bytes, content type)."""
    pil_format, content_type = FORMATS[fmt]
    if alpha is not None and fmt == "jpeg":
        rgb = rgb * alpha + (1 - alpha)  # composite over white: JPEG has no alpha channel
        alpha = None
    arr = to_uint8(rgb if alpha is None else torch.cat([rgb, alpha], 0))
    buf = io.BytesIO()
    level = png_level()
    png = {"compress_level": level, "compress_type": zlib.Z_RLE if level == 1 else zlib.Z_DEFAULT_STRATEGY}
    kwargs = {"quality": quality} if fmt in ("jpeg", "webp") else png
    Image.fromarray(arr, mode="RGB" if alpha is None else "RGBA").save(buf, format=pil_format, **kwargs)
    return buf.getvalue(), content_type
