"""Where shards come from: a folder, a brace pattern, http(s):// URLs or webdataset `pipe:` commands.

    data/shards/coco                                  a folder: its train-*.tar / val-*.tar
    /data/coco/train-{000000..000146}.tar             a brace pattern (local files, all must exist)
    https://host/coco/train-{000000..000146}.tar      URLs, read with curl (retries transient errors)
    pipe:aws s3 cp s3://bucket/train-{0..9}.tar -     any command that writes a tar to stdout
    a.tar::b.tar                                      several specs, joined with `::`

Local files are checked at start-up (a clear error naming what is missing); remote shards are
only known when read, and one that fails mid-run is warned about and counted (see `samples`).

http(s) and `pipe:` shards are read from a producer process (curl, the command). `ShardSamples`
opens each in its own session and, when the stream is closed, kills that session: a stream closed
before its end (validation cut at `limit_val_batches`, a run that stops) has no reader any more,
and webdataset's own close would wait up to 2 h for a producer that cannot finish — it blocks on
a full pipe whose read end a DataLoader worker forked meanwhile still holds (docs/scale.md).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from webdataset.gopen import Pipe, gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "ais://")
# webdataset's own curl command line (gopen_curl): retries transient errors, fails on HTTP errors
CURL = ["curl", "--connect-timeout", "30", "--retry", "30", "--retry-delay", "2", "-f", "-s", "-L"]
CLOSE_GRACE_S = 5.0  # a producer killed on close gets this long to go before SIGKILL


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


def open_shard(url: str) -> IO[bytes]:
    """A readable stream of one shard. http(s) and `pipe:` producers start in a session of their own,
    so `close_shard` can end them and whatever they started (a shell's children)."""
    if url.startswith("pipe:"):
        return Pipe(url[len("pipe:"):], mode="rb", shell=True, bufsize=8192, ignore_status=[141],
                    start_new_session=True)
    if url.startswith(("http://", "https://")):
        return Pipe([*CURL, url], mode="rb", bufsize=8192, ignore_status=[141, 23], start_new_session=True)
    return gopen(url)  # local files, and webdataset's other schemes as it opens them


def close_shard(stream: IO[bytes], grace: float = CLOSE_GRACE_S) -> None:
    """Close a shard stream without waiting on its producer: one still running is killed (nobody
    reads the rest), so closing takes at most `grace` seconds, whoever else holds the pipe."""
    if not isinstance(stream, Pipe):
        stream.close()
        return
    proc = stream.proc
    stream.stream.close()  # first: Pipe's own close (also its __del__) is then a no-op
    if proc.poll() is None:
        _signal_session(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_session(proc, signal.SIGKILL)
            proc.wait(grace)
    stream.status = proc.returncode


def _signal_session(proc: subprocess.Popen, sig: int) -> None:
    try:
        if os.getpgid(proc.pid) == proc.pid:  # its own session: the shell and what it started
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:  # it ended meanwhile
        pass


def open_shards(src: Iterable[dict[str, Any]], handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """webdataset's `url_opener`, with each stream closed by `close_shard` when the next shard is
    wanted or when the stream is dropped mid-shard (the generator is closed)."""
    for sample in src:
        url = sample["url"]
        try:
            stream = open_shard(url)
        except Exception as exn:
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            break
        try:
            yield {**sample, "stream": stream}
        finally:
            close_shard(stream)


class ShardSamples:
    """A pipeline stage: shard URLs → samples (dicts of a key's files), as webdataset's
    `tarfile_to_samples` but opening shards with `open_shards`. A class so workers can pickle it."""

    def __init__(self, handler: Callable[[Exception], bool]):
        self.handler = handler

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        files = tar_file_expander(open_shards(src, self.handler), handler=self.handler)
        return group_by_keys(files, handler=self.handler)
