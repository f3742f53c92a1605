"""LightningDataModule streaming content photos from WebDataset shards.

Train: an endless, shuffled stream of random `image_size` crops (+ horizontal flips), split by
node (DDP rank) and by DataLoader worker, cut into epochs of `steps_per_epoch` batches per
rank. Validation: the fixed `val-*.tar` shards, centre crops, same order every time, seen whole
by every rank (it is small, and identical on all ranks keeps the logged metric simple).

A sample that does not decode (a corrupt or truncated JPEG inside a shard) is skipped with a
warning; how many were skipped travels with the next batch (`ContentBatch.skipped`), because
the decoding happens in DataLoader worker processes, and the module logs the running total.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import lightning as L
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from pipeline.data.sample_data import SAMPLE_SHARDS, ensure_sample_shards


def shard_urls(folder: Path, split: str) -> list[str]:
    """The sorted `split-*.tar` files in `folder`, or a clear error naming what is missing."""
    urls = sorted(str(p) for p in Path(folder).glob(f"{split}-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no {split}-*.tar shards in {folder}; build them with "
                                f"`make shards SRC=<folder of photos> OUT={folder}`")
    return urls


class ContentBatch(NamedTuple):
    """One batch: images (B, 3, H, W) in [0, 1], the number of corrupt samples skipped since the
    previous batch of this worker, and the samples' shard keys."""
    images: torch.Tensor
    skipped: int
    keys: list[str]


class DecodeSamples:
    """A webdataset stage: raw samples → (image tensor, skipped before it, key). A sample that
    does not decode is warned about and counted instead of stopping the run. (A class, not a
    closure, so DataLoader workers can pickle it under any start method.)"""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]):
        self.transform = transform

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
            yield image, pending, key
            pending = 0


def _collate(samples: list[tuple]) -> ContentBatch:
    images, skipped, keys = zip(*samples)
    return ContentBatch(torch.stack(images), int(sum(skipped)), list(keys))


def _all_nodes(urls):  # validation: every rank reads every shard
    yield from urls


class ContentDataModule(L.LightningDataModule):
    """Content photos for style-transfer training.

    Args:
        data_dir: folder with `train-*.tar` and `val-*.tar` (from `make shards`); None → the
            scikit-image sample set, built on first use under data/shards/skimage.
        image_size: side of the square random training crops, px.
        resize: short side the photo is resized to before cropping (None → image_size, i.e. the
            crop spans the whole short side, as Johnson et al. resize COCO to 256²).
        val_size: side of the centre-cropped validation images.
        batch_size: images per step per rank.
        steps_per_epoch: batches per rank per epoch (the stream itself is endless).
        num_workers: DataLoader workers per rank (each gets its own shards).
        shuffle_buffer: samples held for shuffling.
        seed: base seed of the shard and sample shuffles.
    """

    def __init__(self, data_dir: str | None = None, image_size: int = 256, resize: int | None = None,
                 val_size: int = 256, batch_size: int = 4, steps_per_epoch: int = 200,
                 num_workers: int = 1, shuffle_buffer: int = 256, seed: int = 0):
        super().__init__()
        if resize is not None and resize < image_size:
            raise ValueError(f"resize ({resize}) must be ≥ image_size ({image_size})")
        if min(image_size, val_size, batch_size, steps_per_epoch) < 1 or num_workers < 0:
            raise ValueError("image_size, val_size, batch_size and steps_per_epoch must be ≥ 1, num_workers ≥ 0")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir else SAMPLE_SHARDS
        short = resize or image_size
        self.train_transform = T.Compose([T.Resize(short, antialias=True), T.RandomCrop(image_size),
                                          T.RandomHorizontalFlip(), T.ToTensor()])
        self.val_transform = T.Compose([T.Resize(val_size, antialias=True), T.CenterCrop(val_size), T.ToTensor()])

    def prepare_data(self) -> None:
        if self.hparams.data_dir is None:
            ensure_sample_shards(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        self.train_urls = shard_urls(self.data_dir, "train")
        self.val_urls = shard_urls(self.data_dir, "val")

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.trainer.current_epoch if self.trainer is not None else 0)

    def _train_loader(self, epoch: int) -> DataLoader:
        """The training stream; its shuffle seed depends on the epoch it starts at, so a run
        resumed from a checkpoint continues with new samples instead of replaying its start."""
        hp = self.hparams
        workers = max(1, hp.num_workers)
        seed = hp.seed + 1_000_003 * epoch
        ds = (wds.WebDataset(self.train_urls, repeat=True, shardshuffle=len(self.train_urls), seed=seed,
                             nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                             empty_check=False, handler=wds.warn_and_continue)
              .shuffle(hp.shuffle_buffer, seed=seed)
              .compose(DecodeSamples(self.train_transform))
              .batched(hp.batch_size, collation_fn=_collate, partial=False)
              .with_epoch(math.ceil(hp.steps_per_epoch / workers)))  # per worker
        return DataLoader(ds, batch_size=None, num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        ds = (wds.WebDataset(self.val_urls, shardshuffle=False, nodesplitter=_all_nodes,
                             workersplitter=None, empty_check=False, handler=wds.warn_and_continue)
              .compose(DecodeSamples(self.val_transform))
              .batched(self.hparams.batch_size, collation_fn=_collate, partial=True))
        return DataLoader(ds, batch_size=None, num_workers=0)
