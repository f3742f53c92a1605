"""`make demo`'s last step: wait for the TorchServe that `make serve` started, stylize a photo with the
starter model in each of its styles over HTTP, and print the curl line to try.

`make demo` exports the committed starter model (models/starter/), archives it and starts TorchServe
with ./config.properties; this step reads the same file for the addresses and ./key_file.json (which
TorchServe writes at start-up, token auth on) for the keys, so it talks to that server, whatever ports
the file names.
"""
from __future__ import annotations

import http.client
import io
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from pipeline.ops.torchserve_api import Address, request, wait_ready

DEMO_MODEL = "starter"


def read_properties(path: Path) -> dict[str, str]:
    """TorchServe's config.properties as key → value (comments and blank lines skipped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make demo` from the folder `make serve` uses "
                                "(the repository root, or one with its own config.properties)")
    props = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def address(props: dict[str, str], key: str, default: str) -> Address:
    """(host, port) of one of TorchServe's listeners."""
    url = urlsplit(props.get(key, default))
    return url.hostname or "127.0.0.1", url.port or 80


def demo_photo() -> bytes:
    """scikit-image's `chelsea` (public domain) as a JPEG: a photo every install has."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def stylize(inference: Address, key: str, model: str, photo: bytes, style: str | None) -> bytes:
    """The served model's JPEG of `photo` (in `style`), checked to be an image of the photo's size."""
    headers = {"Content-Type": "image/jpeg", "X-Format": "jpeg", **({"X-Style": style} if style else {})}
    try:
        status, _, body = request(inference, "POST", f"/predictions/{model}", photo, headers, key, timeout=120)
    except (OSError, http.client.HTTPException) as e:
        raise RuntimeError(f"POST /predictions/{model} (style {style}): {type(e).__name__}: {e}") from None
    if status != 200:
        raise RuntimeError(f"POST /predictions/{model} (style {style}): HTTP {status} {body[:300]!r}")
    size, expected = Image.open(io.BytesIO(body)).size, Image.open(io.BytesIO(photo)).size
    if size != expected:
        raise RuntimeError(f"the server answered a {size} image for a {expected} photo")
    return body


def command(*, out: Path = Path("demo"), model: str = DEMO_MODEL, config: Path = Path("config.properties"),
            key_file: Path = Path("key_file.json"), metadata: Path | None = None, timeout: float = 240) -> int:
    """Wait for TorchServe to serve the starter model, stylize a photo in each of its styles, print the curl line.

    Args:
        out: folder for the photo and its stylized versions (OUT/photo.jpg, OUT/<style>.jpg).
        model: the served model's name.
        config: the config.properties the server was started with (its addresses).
        key_file: the keys TorchServe wrote at start-up.
        metadata: the served export's metadata.json, for its style names (default: runs/MODEL/export/).
        timeout: seconds to wait for the model's worker.
    """
    metadata = metadata or Path("runs") / model / "export" / "metadata.json"
    try:
        props = read_properties(config)
        host, port = address(props, "inference_address", "http://127.0.0.1:8080")
        try:
            keys, _ = wait_ready(key_file, (host, port), address(props, "management_address", "http://127.0.0.1:8081"),
                                 [model], timeout)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; see logs/") from None
        names = (json.loads(metadata.read_text()).get("styles") or [None]) if metadata.is_file() else [None]
        photo = demo_photo()
        out.mkdir(parents=True, exist_ok=True)
        (out / "photo.jpg").write_bytes(photo)
        for name in names:
            (out / f"{name or model}.jpg").write_bytes(stylize((host, port), keys["inference"], model, photo, name))
            print(f"{out / f'{name or model}.jpg'}: the photo {out / 'photo.jpg'} served by {model!r}"
                  + (f" in the style {name!r}" if name else ""))
    except (FileNotFoundError, RuntimeError, TimeoutError, ValueError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print(f"\nTorchServe serves {model!r} on {host}:{port}. Try your own photo:\n"
          "KEY=$(python3 -c 'import json; print(json.load(open(\"key_file.json\"))[\"inference\"][\"key\"])')\n"
          f"curl -s -H \"Authorization: Bearer $KEY\" -H \"Content-Type: image/jpeg\" "
          + (f"-H \"X-Style: {names[0]}\" " if names[0] else "") + "-H \"X-Strength: 0.8\" \\\n"
          f"     --data-binary @photo.jpg http://{host}:{port}/predictions/{model} -o stylized.png\n"
          "make stop   # when done")
    return 0
