"""Writing a file (or a folder of files) so that it appears whole or not at all.

Every writer of something another process may read while it is written (a checkpoint a resume
needs, a shard a loader reads, a `.mar` a running server picks up, an export, a film) goes through
`atomic_write`: the body writes a temporary path beside the target, which is renamed onto the
target only when the body returns. A rename within one directory is atomic on POSIX file systems.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_write(path: str | Path, *, folder: bool = False) -> Iterator[Path]:
    """A temporary path with `path`'s own name, inside a hidden private folder beside it
    (`.NAME.*.partial/NAME`: the suffix, which some writers dispatch on, and the name, which some
    choose themselves, are kept). When the body returns, the file is flushed to disk and renamed
    onto `path`; when it raises, nothing of it is left. A body that deletes the temporary file
    publishes nothing (e.g. a shard none of whose images could be read).

    `folder=True`: the temporary is a folder; its files are moved into `path` (created if need
    be) one by one, after all were written, so each file appears whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    tmp = private / path.name
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        if folder:
            path.mkdir(exist_ok=True)
            for f in sorted(tmp.iterdir()):
                os.replace(f, path / f.name)
        elif tmp.exists():
            _flush_to_disk(tmp)  # the rename must never publish a file the disk has not got
            os.replace(tmp, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _flush_to_disk(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
