"""Batches per epoch of the real training stream, under real DDP ranks (gloo) × DataLoader workers.

    python tests/epoch_probe.py --shards ROOT --world 2 --out result.json

ROOT holds one shard folder per case (`s1/`, `s3/`, `s8/`: 1, 3 or 8 train shards). Every rank
builds `ContentDataModule(...)`'s training loader as Lightning would (its rank, the epoch), iterates
two epochs for each worker count, and writes the batch keys it saw. Used by
tests/test_data_scale.py, and runnable against an older checkout to reproduce what it fixed
(for that, it also accepts the old `_train_loader(epoch)` signature).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

WORKERS = (0, 2)
STEPS, BATCH, EPOCHS = 8, 2, 2


def probe(rank: int, world: int, shards: Path, port: int, out: Path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if (Path.cwd() / "pipeline" / "datamodule.py").exists():  # a checkout from before the stage layout
        from pipeline.datamodule import ContentDataModule
    else:
        from pipeline.data.datamodule import ContentDataModule

    result = {}
    for case in sorted(p.name for p in shards.iterdir() if p.is_dir()):
        for workers in WORKERS:
            dm = ContentDataModule(str(shards / case), image_size=32, resize=40, val_size=32, batch_size=BATCH,
                                   steps_per_epoch=STEPS, num_workers=workers, shuffle_buffer=64)
            dm.setup("fit")
            takes_rank = "rank" in inspect.signature(dm._train_loader).parameters
            epochs = []
            for epoch in range(EPOCHS):  # Lightning builds the loader once and iterates it every epoch
                if epoch == 0:
                    loader = dm._train_loader(0, rank) if takes_rank else dm._train_loader(0)
                epochs.append([list(batch.keys) for batch in loader])
            result[f"{case}/w{workers}"] = epochs
            del loader
    (out.parent / f"{out.stem}.rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--port", type=int, default=29531)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    sys.path.insert(0, os.getcwd())  # the checkout being probed
    mp.start_processes(probe, args=(args.world, args.shards, args.port, args.out), nprocs=args.world,
                       start_method="fork")
    merged = {str(r): json.loads((args.out.parent / f"{args.out.stem}.rank{r}.json").read_text()) for r in range(args.world)}
    args.out.write_text(json.dumps(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
