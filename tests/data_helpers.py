"""Helpers of the data and training tests (no tests here): small shard sets, a loopback HTTP file server
standing in for object storage, and a shard with one corrupt sample."""
from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.shard_writer import write_split

N_IMAGES = 24


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_case(folder: Path, n_shards: int, n_val: int = 4) -> Path:
    """`n_shards` train shards holding N_IMAGES distinct images, and one val shard."""
    items = [(f"img{i:03d}", _jpeg(i)) for i in range(N_IMAGES)]
    write_split(items, folder, "train", max_side=64, min_shards=n_shards, max_per_shard=-(-N_IMAGES // n_shards),
                progress=False)
    write_split(items[:n_val], folder, "val", max_side=64, min_shards=1, max_per_shard=100, progress=False)
    assert len(list(folder.glob("train-*.tar"))) == n_shards
    return folder


class LoopbackFiles:
    """A folder served over HTTP on 127.0.0.1 (a stand-in for object storage), in a thread."""

    def __init__(self, folder: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a, **k: None  # quiet
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> "LoopbackFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def read_tar(path: Path) -> dict[str, bytes]:
    """Every member of a tar file: name → bytes."""
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def corrupt_a_sample(shard) -> str:
    """Truncate one JPEG inside `shard` (rewriting the tar) and return its key."""
    members = read_tar(shard)
    name = sorted(members)[0]
    members[name] = members[name][: len(members[name]) // 3]
    with tarfile.open(shard, "w") as tf:
        for n, data in sorted(members.items()):
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return name.rsplit(".", 1)[0]
