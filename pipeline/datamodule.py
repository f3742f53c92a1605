"""LightningDataModule streaming content photos from WebDataset shards.

Train: an endless, shuffled stream of random `image_size` crops (+ horizontal flips), split by
node (DDP rank) and by DataLoader worker, cut into epochs of `steps_per_epoch` batches per
rank. Validation: the fixed `val-*.tar` shards, centre crops, same order every time, seen whole
by every rank (it is small, and identical on all ranks keeps the logged metric simple).
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from torchvision import transforms as T

from pipeline.sample_data import ensure_sample_shards

SAMPLE_SHARDS = Path("data/shards/skimage")


def shard_urls(folder: Path, split: str) -> list[str]:
    """The sorted `split-*.tar` files in `folder`, or a clear error naming what is missing."""
    urls = sorted(str(p) for p in Path(folder).glob(f"{split}-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no {split}-*.tar shards in {folder}; build them with "
                                f"`make shards SRC=<folder of photos> OUT={folder}`")
    return urls


def _images(batch: tuple) -> torch.Tensor:
    """`batched` yields a tuple of columns; ours has one, the image tensor (B, 3, H, W)."""
    return batch[0]


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
        hp = self.hparams
        workers = max(1, hp.num_workers)
        ds = (wds.WebDataset(self.train_urls, repeat=True, shardshuffle=len(self.train_urls), seed=hp.seed,
                             nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                             empty_check=False, handler=wds.warn_and_continue)
              .shuffle(hp.shuffle_buffer)
              .decode("pil", handler=wds.warn_and_continue)
              .to_tuple("jpg", handler=wds.warn_and_continue)
              .map_tuple(self.train_transform)
              .batched(hp.batch_size, partial=False)
              .map(_images)
              .with_epoch(math.ceil(hp.steps_per_epoch / workers)))  # per worker
        return DataLoader(ds, batch_size=None, num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        ds = (wds.WebDataset(self.val_urls, shardshuffle=False, nodesplitter=_all_nodes,
                             workersplitter=None, empty_check=False, handler=wds.warn_and_continue)
              .decode("pil", handler=wds.warn_and_continue)
              .to_tuple("jpg", handler=wds.warn_and_continue)
              .map_tuple(self.val_transform)
              .batched(self.hparams.batch_size, partial=True)
              .map(_images))
        return DataLoader(ds, batch_size=None, num_workers=0)
