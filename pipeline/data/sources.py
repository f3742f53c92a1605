"""Where shards come from: a folder, a brace pattern, http(s):// URLs or webdataset `pipe:` commands.

    data/shards/coco                                  a folder: its train-*.tar / val-*.tar
    /data/coco/train-{000000..000146}.tar             a brace pattern (local files, all must exist)
    https://host/coco/train-{000000..000146}.tar      URLs, read with curl (retries transient errors)
    pipe:aws s3 cp s3://bucket/train-{0..9}.tar -     any command that writes a tar to stdout
    a.tar::b.tar                                      several specs, joined with `::`

Local files are checked at start-up (a clear error naming what is missing); remote shards are
only known when read, and one that fails mid-run is warned about and counted (see `samples`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from webdataset.shardlists import expand_urls

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "ais://")


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


def folder_shards(folder: Path, split: str) -> list[str]:
    """The sorted `split-*.tar` files in `folder`, or a clear error naming what is missing."""
    urls = sorted(str(p) for p in Path(folder).glob(f"{split}-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no {split}-*.tar shards in {folder}; build them with "
                                f"`make shards SRC=<folder of photos> OUT={folder}`")
    return urls


def resolve_shards(spec: str, split: str) -> list[str]:
    """Shard URLs of a spec (see the module docstring); `split` names the folder's files."""
    spec = str(spec).strip()
    if not spec:
        raise ValueError(f"empty {split} shard spec")
    if not is_remote(spec) and Path(spec).is_dir():
        return folder_shards(Path(spec), split)
    urls = expand_urls(spec)
    if not urls:
        raise ValueError(f"{split} shards {spec!r} expand to no URL")
    local = [u[len("file:"):] if u.startswith("file:") else u for u in urls if not is_remote(u)]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{split} shards {spec!r}: {len(missing)} of {len(urls)} do not exist, e.g. "
                                f"{', '.join(missing[:3])}{more}")
    if any(u.startswith(("http://", "https://")) for u in urls) and shutil.which("curl") is None:
        raise RuntimeError("http(s) shards are read with curl, which is not installed")
    return urls
