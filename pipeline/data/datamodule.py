"""LightningDataModule streaming content photos from WebDataset shards.

Train: webdataset's answer for multi-node training. Every DataLoader worker of every rank draws
shards *with replacement* (`ResampledShards`), so no worker ever runs dry whatever the number of
shards, ranks, nodes and workers; the loader is cut at exactly `steps_per_epoch` batches
(`WebLoader.with_epoch`), so every rank runs the same number of steps per epoch and DDP never
waits on a rank that ran out. Seeds are per (rank, worker, epoch), so samples differ between
ranks and workers and a resumed run goes on with new ones. Random `image_size` crops + flips.

Validation: the fixed val shards, centre crops, same order every time, seen whole by every rank
(it is small, and identical on all ranks keeps the logged metric simple and the ranks in step).

Shards come from a folder, a brace pattern, http(s) URLs or `pipe:` commands (`sources.py`);
corrupt samples and unreadable shards are warned about, counted and skipped (`samples.py`).
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from torchvision import transforms as T

from pipeline.data.builtin_photos import SAMPLE_SHARDS, ensure_sample_shards
from pipeline.data.stream_stages import DecodeSamples, FailureCounter, WorkerSeed, WorkerShuffle, collate
from pipeline.data.sources import ShardSamples, folder_shards, resolve_shards


class ContentDataModule(L.LightningDataModule):
    """Content photos for style-transfer training.

    Args:
        data_dir: folder with `train-*.tar` and `val-*.tar` (from `make shards`); None (and no
            train_shards) → the scikit-image sample set, built on first use under data/shards/skimage.
        train_shards: training shards as a folder, brace pattern, http(s) URLs or `pipe:` commands
            (see pipeline/data/sources.py); overrides data_dir's train-*.tar.
        val_shards: validation shards, the same forms; overrides data_dir's val-*.tar (needed when
            train_shards is given without data_dir).
        image_size: side of the square random training crops, px.
        resize: short side the photo is resized to before cropping (None → image_size, i.e. the
            crop spans the whole short side, as Johnson et al. resize COCO to 256²).
        val_size: side of the centre-cropped validation images.
        batch_size: images per step per rank.
        steps_per_epoch: batches per rank per epoch, exactly, on every rank (the stream is endless).
        num_workers: DataLoader workers per rank (each draws its own shards, with replacement).
        shuffle_buffer: samples held for shuffling, per worker.
        seed: base seed of the shard draws and sample shuffles.
    """

    def __init__(self, data_dir: str | None = None, train_shards: str | None = None, val_shards: str | None = None,
                 image_size: int = 256, resize: int | None = None, val_size: int = 256, batch_size: int = 4,
                 steps_per_epoch: int = 200, num_workers: int = 1, shuffle_buffer: int = 256, seed: int = 0):
        super().__init__()
        if resize is not None and resize < image_size:
            raise ValueError(f"resize ({resize}) must be ≥ image_size ({image_size})")
        if min(image_size, val_size, batch_size, steps_per_epoch, shuffle_buffer) < 1 or num_workers < 0:
            raise ValueError("image_size, val_size, batch_size, steps_per_epoch and shuffle_buffer must be ≥ 1, "
                             "num_workers ≥ 0")
        if train_shards and not (val_shards or data_dir):
            raise ValueError("train_shards is given without validation shards: give val_shards (or data_dir)")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir else SAMPLE_SHARDS
        short = resize or image_size
        self.train_transform = T.Compose([T.Resize(short, antialias=True), T.RandomCrop(image_size),
                                          T.RandomHorizontalFlip(), T.ToTensor()])
        self.val_transform = T.Compose([T.Resize(val_size, antialias=True), T.CenterCrop(val_size), T.ToTensor()])

    def prepare_data(self) -> None:
        if self.hparams.data_dir is None and self.hparams.train_shards is None:
            ensure_sample_shards(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shard lists and check, at start-up, what would otherwise fail mid-run."""
        hp = self.hparams
        self.train_urls = resolve_shards(hp.train_shards, "train") if hp.train_shards else folder_shards(self.data_dir, "train")
        self.val_urls = resolve_shards(hp.val_shards, "val") if hp.val_shards else folder_shards(self.data_dir, "val")
        if not hasattr(self, "val_samples"):
            self.val_samples = sum(len(batch.keys) for batch in self._val_dataset())
            if self.val_samples == 0:
                raise ValueError(f"the validation shards ({self.val_urls[0]}, ...) hold no readable sample: "
                                 "validation, and the checkpoint that monitors its loss, would have nothing to use")

    def train_dataloader(self) -> wds.WebLoader:
        trainer = self.trainer
        return self._train_loader(trainer.current_epoch if trainer is not None else 0,
                                  trainer.global_rank if trainer is not None else 0)

    def _train_loader(self, epoch: int, rank: int = 0) -> wds.WebLoader:
        """Exactly `steps_per_epoch` batches per iteration, for any shards × ranks × workers. The seed
        depends on the epoch the loader starts at, so a resumed run continues with new samples."""
        hp = self.hparams
        seed = hp.seed + 1_000_003 * epoch
        worker_seed, failures = WorkerSeed(rank), FailureCounter()
        stream = wds.DataPipeline(
            wds.ResampledShards(self.train_urls, seed=seed, worker_seed=worker_seed, deterministic=True),
            ShardSamples(failures),
            WorkerShuffle(hp.shuffle_buffer, seed, worker_seed),
            DecodeSamples(self.train_transform, failures),
            wds.batched(hp.batch_size, collation_fn=collate, partial=False),
        )
        loader = wds.WebLoader(stream, batch_size=None, num_workers=hp.num_workers,
                               persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())
        # with_epoch cuts the endless loader at exactly steps_per_epoch batches; with_length lets
        # Lightning know the epoch's length (progress bar, schedules from estimated_stepping_batches).
        return loader.with_epoch(hp.steps_per_epoch).with_length(hp.steps_per_epoch, silent=True)

    def _val_dataset(self) -> wds.DataPipeline:
        return wds.DataPipeline(
            wds.SimpleShardList(self.val_urls),
            ShardSamples(FailureCounter()),
            DecodeSamples(self.val_transform),
            wds.batched(self.hparams.batch_size, collation_fn=collate, partial=True),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._val_dataset(), batch_size=None, num_workers=0)
