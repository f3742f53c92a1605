"""Steps with a non-finite loss are skipped on the device, identically on every DDP rank, with no
host–device sync per step; the run stops when too many come in a row.

How: after backward (so after DDP's all-reduce, which leaves every rank with the same gradients)
the gradients' total norm is checked on the device, and the result is handed to fused Adam as
`found_inf` — the same mechanism AMP's GradScaler uses: the kernel then leaves weights, moments
and step count untouched. A NaN on one rank makes the all-reduced gradients NaN on all of them,
so every rank skips the same steps without a collective of its own. The consecutive-skip counters
live on the device and are read only at the log interval (`check`), where Lightning syncs anyway:
a run of bad steps is stopped up to one interval late, with its weights unharmed meanwhile.
"""
from __future__ import annotations

import torch


class NonFiniteGuard:
    """Device-side skip of non-finite steps for a fused Adam, and the stop after `limit` in a row."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"max_nonfinite must be ≥ 1, got {limit}")
        self.limit = limit
        self._run: torch.Tensor | None = None  # consecutive skipped steps now
        self._peak: torch.Tensor | None = None  # longest run since the last check
        self._total: torch.Tensor | None = None  # skipped steps in this fit

    @staticmethod
    def optimizer(params, lr: float) -> torch.optim.Adam:
        """Adam in its fused form: the one that takes `found_inf` (CPU and CUDA)."""
        return torch.optim.Adam(params, lr=lr, fused=True)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Call after backward, before `optimizer.step`: sets the optimizer's `found_inf` from the
        gradients, on the device."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        bad = (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float()
        for group in optimizer.param_groups:  # a checkpoint from before the fused Adam restores fused=None
            group["fused"], group["foreach"] = True, None
        optimizer.found_inf = bad
        if self._run is None:
            self._run, self._peak, self._total = (torch.zeros((), device=bad.device) for _ in range(3))
        self._run = (self._run + 1) * bad
        self._peak = torch.maximum(self._peak, self._run)
        self._total = self._total + bad

    def check(self) -> float:
        """The host read, at the log interval: skipped steps so far in this fit; raises
        FloatingPointError if `limit` or more came in a row since the last check."""
        if self._run is None:
            return 0.0
        peak, total = (float(v) for v in torch.stack([self._peak, self._total]).tolist())
        self._peak = self._run.clone()
        if peak >= self.limit:
            raise FloatingPointError(f"loss was non-finite for {peak:.0f} consecutive steps (skipped: weights and "
                                     "optimizer state untouched); stopping. Lower the lr or check the data.")
        return total
