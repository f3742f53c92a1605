"""pipeline/train/nonfinite.py and seeds.py: non-finite steps skipped in the fused Adam and counted, and
per-rank random streams."""


import pytest
import torch

from pipeline.train.nonfinite import NonFiniteGuard
from pipeline.train.seeds import rank_seed, seed_this_rank



# ----------------------------------------------------------------------------------------------
# nonfinite.py

def _linear_with_grads(grads: list[torch.Tensor], guard: NonFiniteGuard) -> tuple[torch.nn.Linear, torch.optim.Adam]:
    net = torch.nn.Linear(3, 2)
    opt = guard.optimizer(net.parameters(), lr=0.1)
    for p, g in zip(net.parameters(), grads):
        p.grad = g.clone()
    return net, opt


def _state(net: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    out = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        out.extend(v.detach().clone() for v in opt.state.get(p, {}).values() if torch.is_tensor(v))
    return out


def test_guard_refuses_a_limit_below_one() -> None:
    """max_nonfinite must tolerate at least one step."""
    with pytest.raises(ValueError, match="max_nonfinite must be"):
        NonFiniteGuard(0)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_guard_skips_a_non_finite_step_in_the_fused_adam_and_matches_an_adam_that_never_saw_it(bad_value: float) -> None:
    """A NaN/±inf gradient leaves the weights, Adam's moments and its step count untouched; the run of
    steps good, bad, good ends where a plain (non-fused) Adam that only saw the two good steps ends."""
    gen = torch.Generator().manual_seed(1)
    good = [[torch.randn(2, 3, generator=gen), torch.randn(2, generator=gen)] for _ in range(2)]
    bad = [g.clone() for g in good[0]]
    bad[0][1, 2] = bad_value
    guard = NonFiniteGuard(limit=5)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(net.state_dict())
    opt = guard.optimizer(net.parameters(), lr=0.1)
    assert opt.param_groups[0]["fused"] is True
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.1, foreach=False, fused=False)
    for step, grads in enumerate([good[0], bad, good[1]]):
        for p, g in zip(net.parameters(), grads):
            p.grad = g.clone()
        before = _state(net, opt)
        guard.before_step(opt)
        opt.step()
        if grads is bad:
            after = _state(net, opt)
            assert len(after) == len(before) and all(torch.equal(x, y) for x, y in zip(before, after)), step
        else:
            for p, g in zip(reference.parameters(), grads):
                p.grad = g.clone()
            ref_opt.step()
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    assert float(opt.state[next(net.parameters())]["step"]) == 2.0
    assert guard.check() == 1.0


def test_guard_counts_runs_across_checks_and_stops_at_the_limit() -> None:
    """check() returns the skipped steps so far; it raises once `limit` non-finite steps came in a row,
    also when the run spans a check, and not for as many bad steps split by a finite one."""
    finite, nan = [torch.ones(2, 3), torch.ones(2)], [torch.full((2, 3), float("nan")), torch.ones(2)]
    guard = NonFiniteGuard(limit=3)
    assert guard.check() == 0.0  # nothing seen yet
    net, opt = _linear_with_grads(finite, guard)

    def steps(pattern: str) -> None:
        for c in pattern:
            for p, g in zip(net.parameters(), nan if c == "B" else finite):
                p.grad = g.clone()
            guard.before_step(opt)
            opt.step()

    steps("GBBGBBG")  # 4 bad, never 3 in a row
    assert guard.check() == 4.0
    steps("BB")  # a run of 2, broken after the check by a finite step: the runs do not add up
    assert guard.check() == 6.0
    steps("GBB")  # a run of 2 ...
    assert guard.check() == 8.0
    steps("B")  # ... that reaches 3 after the check
    with pytest.raises(FloatingPointError, match="non-finite for 3 consecutive steps"):
        guard.check()


def test_guard_ignores_a_step_without_gradients_and_repairs_a_restored_unfused_adam() -> None:
    """No gradients: nothing counted. An Adam restored from a checkpoint from before the fused one
    (fused=None, foreach=True) is switched to the fused kernel, so it can take `found_inf` and skip."""
    guard = NonFiniteGuard(limit=2)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, foreach=True)
    guard.before_step(opt)  # no grads yet
    assert guard.check() == 0.0 and not hasattr(opt, "found_inf")
    for p in net.parameters():
        p.grad = torch.full_like(p, float("nan"))
    before = [p.detach().clone() for p in net.parameters()]
    guard.before_step(opt)
    assert opt.param_groups[0]["fused"] is True and opt.param_groups[0]["foreach"] is None
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert guard.check() == 1.0


# ----------------------------------------------------------------------------------------------
# seeds.py

def test_rank_seeds_are_distinct_in_range_and_rank_zero_keeps_the_seed() -> None:
    """Every (seed, rank) of realistic runs gets its own seed, a valid torch seed; rank 0's is the seed."""
    seeds = [0, 1, 2, 7, 42, 1234, 99_999, 2**31 - 1, 2**32 - 1]
    got = {(s, r): rank_seed(s, r) for s in seeds for r in range(64)}
    assert all(rank_seed(s, 0) == s for s in seeds)
    for s in seeds:  # within one run, every rank draws its own stream
        assert len({got[(s, r)] for r in range(64)}) == 64
    assert all(0 <= v < 2**63 for v in got.values())
    assert 0 <= rank_seed(2**63 - 1, 1) < 2**63  # wraps instead of overflowing torch's seed range


def test_seed_this_rank_gives_each_rank_its_own_repeatable_stream(rng: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 keeps its stream (no reseed); ranks > 0 reseed from PL_GLOBAL_SEED: the same rank draws
    the same numbers, different ranks different ones."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")

    def draws(rank: int) -> torch.Tensor:
        torch.manual_seed(123)  # what seed_everything left, then the weights' draws
        torch.rand(3)
        seed_this_rank(rank)
        return torch.rand(16)

    torch.manual_seed(123)
    torch.rand(3)
    continued = torch.rand(16)
    assert torch.equal(draws(0), continued)  # rank 0: the stream continues
    r1, r1_again, r2 = draws(1), draws(1), draws(2)
    assert torch.equal(r1, r1_again)
    assert not torch.equal(r1, r2) and not torch.equal(r1, draws(0))
    assert torch.equal(r1, torch.rand(16, generator=torch.Generator().manual_seed(rank_seed(5, 1))))


def test_seed_this_rank_without_pl_global_seed_uses_torchs_initial_seed(rng: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No seed_everything: the run's seed is torch.initial_seed()."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    torch.manual_seed(77)
    torch.rand(5)
    seed_this_rank(3)
    assert torch.equal(torch.rand(8), torch.rand(8, generator=torch.Generator().manual_seed(rank_seed(77, 3))))
