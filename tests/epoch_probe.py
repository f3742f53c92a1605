"""Batches per epoch of the real training stream, under real DDP ranks (gloo) × DataLoader workers.

    python tests/epoch_probe.py --shards ROOT --world 2 --out result.json

ROOT holds one shard folder per case (`s1/`, `s3/`, `s8/`: 1, 3 or 8 train shards). Every rank
builds `ContentDataModule(...)`'s training loader as Lightning would (its rank, the epoch), iterates
two epochs for each worker count, and writes the batch keys it saw. Used by
tests/test_data_scale.py, and runnable against an older checkout to reproduce what it fixed
(for that, it also accepts the old `_train_loader(epoch)` signature).

With `--style IMAGE` every rank also reports what training draws on it (`draws_probe`): the
generator's initial weights, the per-sample conditions after the per-rank reseed, and a DDP step
whose loss is NaN on rank 1 only, through the non-finite guard.
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


def probe(rank: int, world: int, shards: Path, port: int, out: Path, style: str | None = None) -> None:
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
    if style is not None:
        result["draws"] = draws_probe(rank, style)
    (out.parent / f"{out.stem}.rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def draws_probe(rank: int, style: str) -> dict:
    """This rank's initial generator weights (as LightningCLI seeds them), its draws after the fit-start
    reseed, and the weights of a DDP model after a step that is NaN on rank 1 and one finite step."""
    import torch
    from lightning.fabric.utilities.seed import seed_everything
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.train.module import StyleTransferModule
    from pipeline.train.nonfinite import NonFiniteGuard
    from pipeline.train.seeds import seed_this_rank

    seed_everything(0)  # what LightningCLI does on every rank
    module = StyleTransferModule(style, style_size=32, strength_control=True, stability_weight=1.0, strength_samples=16)
    weights = [p.detach().flatten()[:8].tolist() for p in module.generator.parameters()]
    seed_this_rank(rank)  # what the module's on_fit_start does
    _, _, strength = module.with_strength_samples(torch.zeros(16, 3, 2, 2), *module.draw_conditions(16))
    noise = torch.randn(8).tolist()  # as the stability term draws its noise and warps
    net = DistributedDataParallel(torch.nn.Linear(2, 2))
    guard = NonFiniteGuard(limit=2)
    opt = guard.optimizer(net.parameters(), lr=0.1)
    after = []
    for bad in (rank == 1, False):
        opt.zero_grad()
        net(torch.full((1, 2), float("nan") if bad else 1.0)).sum().backward()
        guard.before_step(opt)
        opt.step()
        after.append([p.detach().flatten().tolist() for p in net.parameters()])
    return {"weights": weights, "strength": strength.tolist(), "noise": noise, "ddp_after": after,
            "skipped": guard.check()}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--port", type=int, default=29531)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--style", default=None, help="also probe the per-rank draws (a style image)")
    args = p.parse_args()
    sys.path.insert(0, os.getcwd())  # the checkout being probed
    mp.start_processes(probe, args=(args.world, args.shards, args.port, args.out, args.style), nprocs=args.world,
                       start_method="fork")
    merged = {str(r): json.loads((args.out.parent / f"{args.out.stem}.rank{r}.json").read_text()) for r in range(args.world)}
    args.out.write_text(json.dumps(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
