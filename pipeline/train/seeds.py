"""Per-rank random streams for what training draws per sample (styles, strengths, the stability
term's noise and warps).

LightningCLI's `seed_everything` gives every DDP rank the same seed, which is right for the
generator's initial weights (drawn before this is called) but would make every rank draw the same
conditions and noise — N GPUs training on N copies of one draw. At fit start, rank r > 0 reseeds
torch's generators from (seed, r); rank 0 keeps its stream, so a one-process run draws exactly
what it drew before.
"""
from __future__ import annotations

import os

import torch

RANK_STRIDE = 1_000_003  # a prime: (seed, rank) pairs give distinct seeds for any realistic seed and world


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank` > 0's per-sample draws (`seed` is the run's seed_everything value)."""
    return (seed + RANK_STRIDE * rank) % 2**63


def seed_this_rank(rank: int) -> None:
    """Reseed torch (CPU and every CUDA device) for rank `rank`; a no-op on rank 0. The run's seed is
    the one seed_everything recorded (PL_GLOBAL_SEED), else torch's initial seed."""
    if rank > 0:
        seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        torch.manual_seed(rank_seed(seed, rank))
