"""The stages of the training stream that run inside DataLoader workers. Per-(rank, worker) seeds,
a shuffle that differs per worker, decoding that survives corrupt samples and unreadable shards,
and the batch type that carries their counts back to the training process.

Counts travel with the batches (`ContentBatch.skipped`, `.failed_shards`) because the failures
happen in worker processes; the LightningModule logs the running totals.
"""
from __future__ import annotations

import io
import random
import warnings
from typing import Callable, Iterable, Iterator, NamedTuple

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import get_worker_info

# A stream that reads this many shards in a row without one good sample stops with an error,
# instead of spinning forever on warnings (e.g. every URL returns 404, or the bucket is wrong).
MAX_CONSECUTIVE_SHARD_FAILURES = 50


class ContentBatch(NamedTuple):
    """One batch: images (B, 3, H, W) in [0, 1], the samples' shard keys, and how many corrupt
    samples / unreadable shards this worker skipped since its previous batch."""
    images: torch.Tensor
    skipped: int
    keys: list[str]
    failed_shards: int = 0


class WorkerSeed:
    """A seed distinct for every (rank, DataLoader worker): `rank * 1000 + worker`, as webdataset's
    own `pytorch_worker_seed`, but with the rank given at construction (the training process knows
    it from the trainer) rather than guessed from the environment inside a worker."""

    def __init__(self, rank: int):
        self.rank = rank

    def __call__(self) -> int:
        info = get_worker_info()
        return self.rank * 1000 + (info.id if info is not None else 0)


class WorkerShuffle:
    """webdataset's buffer shuffle with an RNG seeded by (rank, worker, pass, seed): with a single
    shard every worker reads the same tar, and only this makes their sample orders differ."""

    def __init__(self, bufsize: int, seed: int, worker_seed: Callable[[], int]):
        self.bufsize, self.seed, self.worker_seed, self.passes = bufsize, seed, worker_seed, -1

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        self.passes += 1
        rng = random.Random(wds.utils.make_seed(self.worker_seed(), self.passes, self.seed))
        return wds.shuffle(self.bufsize, initial=min(100, self.bufsize), rng=rng)(src)


class FailureCounter:
    """The webdataset exception handler of the training stream: warn, count, continue. A shard that
    cannot be read (HTTP 404, a failing `pipe:` command, a truncated tar) costs its samples, not
    the run. Counts are per worker process and are handed to the next decoded sample."""

    def __init__(self) -> None:
        self.pending = 0
        self.consecutive = 0

    def __call__(self, exn: Exception) -> bool:
        self.pending += 1
        self.consecutive += 1
        where = exn.args[-1] if exn.args else "?"
        warnings.warn(f"skipping an unreadable shard ({where}): {type(exn).__name__}: {exn}", stacklevel=2)
        if self.consecutive >= MAX_CONSECUTIVE_SHARD_FAILURES:
            raise RuntimeError(f"{self.consecutive} shards in a row could not be read (last: {where}: {exn}); "
                               "check the shard URLs and the credentials of the pipe: command") from exn
        return True

    def take(self) -> int:
        """The failures since the last call (a sample was decoded: the stream is alive again)."""
        count, self.pending, self.consecutive = self.pending, 0, 0
        return count


class DecodeSamples:
    """A webdataset stage: raw samples → (image tensor, corrupt samples skipped before it,
    unreadable shards before it, key). A sample that does not decode is warned about and counted
    instead of stopping the run. (A class, not a closure, so DataLoader workers can pickle it.)"""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], failures: FailureCounter | None = None):
        self.transform, self.failures = transform, failures

    def __call__(self, samples: Iterable[dict]) -> Iterator[tuple]:
        pending = 0
        for sample in samples:
            key = sample.get("__key__", "?")
            try:
                with Image.open(io.BytesIO(sample["jpg"])) as im:
                    image = self.transform(im.convert("RGB"))  # convert() forces the full decode
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
                pending += 1
                warnings.warn(f"skipping corrupt sample {key!r} in {sample.get('__url__', '?')}: "
                              f"{type(err).__name__}: {err}", stacklevel=2)
                continue
            yield image, pending, self.failures.take() if self.failures is not None else 0, key
            pending = 0


def collate(samples: list[tuple]) -> ContentBatch:
    images, skipped, failed, keys = zip(*samples)
    return ContentBatch(torch.stack(images), int(sum(skipped)), list(keys), int(sum(failed)))
