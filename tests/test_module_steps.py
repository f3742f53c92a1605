"""pipeline/train/module.py, in-process without a fit: forward defaults, the per-sample draws, the loss
terms and the training / validation steps (the real VGG-16, small generators)."""

from types import SimpleNamespace

import pytest
import torch

from pipeline.data.stream_stages import ContentBatch
from pipeline.model.generators import PHOTO_EPS
from pipeline.train.conditions import FULL_STRENGTH_SHARE
from pipeline.train.module import StyleTransferModule
from pipeline.train.nonfinite import NonFiniteGuard
from pipeline.train.seeds import rank_seed

from train_helpers import random_photos, record_logs


# ----------------------------------------------------------------------------------------------
# module.py: forward, draws, terms, steps

def test_forward_defaults_are_the_first_style_at_full_strength(duo: StyleTransferModule, single: StyleTransferModule) -> None:
    """forward(x) = forward(x, style 0) = forward(x, style 0, strength 1) ≠ forward(x, style 1);
    strength 0 gives the photo back; a one-style module is its plain generator."""
    x = random_photos()
    with torch.no_grad():
        default = duo(x)
        zeros = torch.zeros(2, dtype=torch.long)
        torch.testing.assert_close(default, duo(x, zeros))
        torch.testing.assert_close(default, duo(x, zeros, torch.ones(2)))
        assert (default - duo(x, torch.ones(2, dtype=torch.long))).abs().max() > 1e-3
        photo = x.clamp(PHOTO_EPS, 1 - PHOTO_EPS)  # strength 0: the photo, up to the clamp before its logit
        torch.testing.assert_close(duo(x, zeros, torch.zeros(2)), photo, atol=1e-5, rtol=0)
        assert (default - x).abs().max() > 0.05
        torch.testing.assert_close(single(x), single.generator(x))
        assert default.shape == x.shape and 0.0 <= float(default.min()) and float(default.max()) <= 1.0


def test_draws_full_strength_share_and_uniform_rest_and_styles_in_range(duo: StyleTransferModule, rng: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """strength_samples=0 (the first scheme), over many draws: ≈ FULL_STRENGTH_SHARE of strengths
    exactly 1, the rest uniform in [0, 1); styles per sample cover 0..N−1 evenly."""
    monkeypatch.setitem(duo.hparams, "strength_samples", 0)
    torch.manual_seed(0)
    n = 40_000
    styles, strength = duo.draw_conditions(n)
    assert styles.shape == (n,) and strength.shape == (n,)
    full = strength == 1.0
    sd = (FULL_STRENGTH_SHARE * (1 - FULL_STRENGTH_SHARE) / n) ** 0.5
    assert abs(float(full.float().mean()) - FULL_STRENGTH_SHARE) < 5 * sd
    rest = strength[~full]
    assert float(rest.min()) >= 0.0 and float(rest.max()) < 1.0
    assert abs(float(rest.mean()) - 0.5) < 0.02 and abs(float((rest < 0.25).float().mean()) - 0.25) < 0.02
    assert styles.dtype == torch.long and set(styles.tolist()) == {0, 1}
    assert abs(float(styles.float().mean()) - 0.5) < 0.02
    images = random_photos()
    assert duo.with_strength_samples(images, styles[:2], strength[:2])[0] is images  # nothing added


@pytest.mark.parametrize("k", [1, 3])
def test_strength_samples_are_added_to_a_full_strength_batch(duo: StyleTransferModule, rng: None, k: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The default scheme: the drawn batch is all at strength 1 (what a model without the control
    trains on); `strength_samples` copies of its first photos, with their styles, are appended at
    strengths uniform in [0, 1) (at most one per photo)."""
    monkeypatch.setitem(duo.hparams, "strength_samples", k)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8)
    styles, strength = duo.draw_conditions(2)
    assert torch.equal(strength, torch.ones(2))
    got_images, got_styles, got_strength = duo.with_strength_samples(images, styles, strength)
    m = min(k, 2)
    assert torch.equal(got_images, torch.cat([images, images[:m]])) and torch.equal(got_styles, torch.cat([styles, styles[:m]]))
    assert torch.equal(got_strength[:2], strength) and got_strength.shape == (2 + m,)
    extra = torch.cat([duo.with_strength_samples(images, styles, strength)[2][2:] for _ in range(5000)])
    assert float(extra.min()) >= 0.0 and float(extra.max()) < 1.0
    assert abs(float(extra.mean()) - 0.5) < 0.02 and abs(float((extra < 0.25).float().mean()) - 0.25) < 0.02


def test_draws_one_style_per_batch_and_none_where_unconditioned(duo: StyleTransferModule, single: StyleTransferModule,
                                                               rng: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """style_sampling=batch: one style for the whole batch, every style over many batches; a one-style
    module without the control draws nothing."""
    monkeypatch.setitem(duo.hparams, "style_sampling", "batch")
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        styles, _ = duo.draw_conditions(8)
        assert styles.shape == (8,) and len(set(styles.tolist())) == 1
        seen |= set(styles.tolist())
    assert seen == {0, 1}
    assert single.draw_conditions(8) == (None, None)


def test_terms_total_is_the_sum_and_the_photo_term_is_the_weighted_mse(duo: StyleTransferModule) -> None:
    """With styles and strengths: total = style + content + tv + photo; photo = photo_weight ·
    mean_b((1 − s_b)·MSE_b(output, photo)) recomputed by hand; all finite; at strength 0 no style term."""
    x = random_photos()
    styles, strength = torch.tensor([0, 1]), torch.tensor([0.25, 1.0])
    with torch.no_grad():
        terms = duo._terms(x, styles, strength)
        output = duo(x, styles, strength)
        zero = duo._terms(x, styles, torch.zeros(2))
    assert set(terms) == {"style", "content", "tv", "photo", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(terms["total"], terms["style"] + terms["content"] + terms["tv"] + terms["photo"])
    mse = [float(((output[b] - x[b]) ** 2).mean()) for b in range(2)]
    expected = 2.0 * (0.75 * mse[0] + 0.0 * mse[1]) / 2
    assert float(terms["photo"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["style"]) > 0 and float(zero["style"]) == 0.0
    assert float(zero["photo"]) < 1e-4  # strength 0 is the photo (up to the logit clamp)


def test_stability_term_is_in_the_total_and_scales_with_its_weight(duo: StyleTransferModule, rng: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Same noise and warps (same seed): the stability term is > 0, triples with a 3× weight, and the
    total is the sum of the terms."""
    x, styles, strength = random_photos(), torch.tensor([1, 0]), torch.ones(2)
    with torch.no_grad():
        torch.manual_seed(3)
        one = duo._terms(x, styles, strength, stability=True)
        monkeypatch.setitem(duo.hparams, "stability_weight", 3.0)
        torch.manual_seed(3)
        three = duo._terms(x, styles, strength, stability=True)
    assert float(one["stability"]) > 0
    assert float(three["stability"]) == pytest.approx(3 * float(one["stability"]), rel=1e-5)
    parts = ("style", "content", "tv", "photo", "stability")
    torch.testing.assert_close(one["total"], sum(one[k] for k in parts))
    assert float(one["photo"]) == 0.0  # full strength: no pull toward the photo


def test_training_step_returns_the_logged_total_counts_data_losses_and_trains_only_the_generator(
        duo: StyleTransferModule, rng: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """training_step: the returned loss is the logged train/total, the sum of the logged terms; the
    batch's skipped-sample and failed-shard counts add up; backward reaches the generator (finite
    gradients) and not the frozen VGG."""
    rec = record_logs(duo, monkeypatch)
    monkeypatch.setattr(duo, "skipped_samples", 3)
    monkeypatch.setattr(duo, "failed_shards", 1)
    torch.manual_seed(0)
    batch = ContentBatch(images=random_photos(), skipped=2, keys=["a", "b"], failed_shards=4)
    duo.generator.zero_grad(set_to_none=True)
    loss = duo.training_step(batch, 0)
    assert (duo.skipped_samples, duo.failed_shards) == (5, 5)
    assert set(rec.logged) == {f"train/{k}" for k in ("style", "content", "tv", "photo", "stability", "total")}
    assert loss is rec.logged["train/total"] and torch.isfinite(loss)
    parts = sum(v for k, v in rec.logged.items() if k != "train/total")
    torch.testing.assert_close(loss, parts)
    loss.backward()
    grads = [p.grad for p in duo.generator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)
    assert all(p.grad is None for p in duo.loss.parameters())
    duo.generator.zero_grad(set_to_none=True)


def test_validation_step_logs_each_style_and_their_mean(duo: StyleTransferModule, single: StyleTransferModule,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Several styles: val/<name>/<term> per style at full strength, val/<term> their mean; one style:
    val/<term> only. No photo term at full strength, no stability term in validation."""
    x = random_photos()
    rec = record_logs(duo, monkeypatch)
    with torch.no_grad():
        duo.validation_step(ContentBatch(images=x, skipped=0, keys=["a", "b"]), 0)
        per_style = [duo._terms(x, torch.full((2,), k, dtype=torch.long)) for k in range(2)]
    names = duo.style_names
    for term in ("style", "content", "tv", "total"):
        for k, name in enumerate(names):
            torch.testing.assert_close(rec.logged[f"val/{name}/{term}"], per_style[k][term])
        torch.testing.assert_close(rec.logged[f"val/{term}"], (per_style[0][term] + per_style[1][term]) / 2)
    assert not any("photo" in k or "stability" in k for k in rec.logged)
    assert float(rec.logged[f"val/{names[0]}/style"]) != float(rec.logged[f"val/{names[1]}/style"])

    rec1 = record_logs(single, monkeypatch)
    with torch.no_grad():
        single.validation_step(ContentBatch(images=x, skipped=0, keys=["a", "b"]), 0)
    assert set(rec1.logged) == {"val/style", "val/content", "val/tv", "val/total"}


def test_module_skips_a_non_finite_step_through_its_hooks(single: StyleTransferModule) -> None:
    """configure_optimizers' Adam with on_before_optimizer_step: a NaN gradient leaves the generator
    as it was, the next finite step moves it."""
    opt = single.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["fused"] is True
    assert opt.param_groups[0]["lr"] == single.hparams.lr
    saved = {k: v.clone() for k, v in single.generator.state_dict().items()}
    try:
        params = list(single.generator.parameters())
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.randn_like(p)
        params[0].grad.view(-1)[0] = float("nan")
        single.on_before_optimizer_step(opt)
        opt.step()
        assert all(torch.equal(p, q) for p, q in zip(params, before))
        for p in params:
            p.grad = torch.randn_like(p)
        single.on_before_optimizer_step(opt)
        opt.step()
        assert any(not torch.equal(p, q) for p, q in zip(params, before))
        assert single.nonfinite.check() == 1.0
    finally:
        single.generator.load_state_dict(saved)
        single.generator.zero_grad(set_to_none=True)
        single.nonfinite = NonFiniteGuard(single.hparams.max_nonfinite)


def test_on_train_batch_end_checks_the_guard_only_at_the_log_interval(single: StyleTransferModule,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Between log intervals nothing is read; at one, the skipped steps and the data-loss counters are
    logged, and `max_nonfinite` bad steps in a row stop the run."""
    rec = record_logs(single, monkeypatch)
    guard = NonFiniteGuard(limit=2)
    monkeypatch.setattr(single, "nonfinite", guard)
    monkeypatch.setattr(single, "skipped_samples", 6)
    monkeypatch.setattr(single, "failed_shards", 2)
    trainer = SimpleNamespace(global_step=7, log_every_n_steps=5)
    monkeypatch.setattr(single, "_trainer", trainer)
    net = torch.nn.Linear(2, 2)
    opt = guard.optimizer(net.parameters(), lr=0.1)

    def nan_step() -> None:
        for p in net.parameters():
            p.grad = torch.full_like(p, float("nan"))
        guard.before_step(opt)
        opt.step()

    nan_step()
    nan_step()
    single.on_train_batch_end(None, None, 0)  # step 7: not a log step, two bad steps unread
    assert rec.logged == {}
    trainer.global_step = 10
    with pytest.raises(FloatingPointError, match="2 consecutive steps"):
        single.on_train_batch_end(None, None, 0)

    guard = NonFiniteGuard(limit=2)
    monkeypatch.setattr(single, "nonfinite", guard)
    opt = guard.optimizer(net.parameters(), lr=0.1)
    nan_step()  # one bad step: reported, not fatal
    single.on_train_batch_end(None, None, 0)
    assert rec.logged == {"train/nonfinite_steps": 1.0, "data/failed_shards": 2.0, "data/skipped_samples": 6.0}
    nan_step()  # the second of a run spanning the log step
    trainer.global_step = 15
    with pytest.raises(FloatingPointError, match="2 consecutive steps"):
        single.on_train_batch_end(None, None, 0)


def test_on_fit_start_reseeds_ranks_above_zero(duo: StyleTransferModule, rng: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's fit start: rank 0 keeps drawing its stream, rank 1 draws the stream of its own seed."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    monkeypatch.setitem(duo.hparams, "strength_samples", 0)  # strengths drawn per sample
    draws = {}
    for rank in (0, 1):
        monkeypatch.setattr(duo, "_trainer", SimpleNamespace(global_rank=rank))
        torch.manual_seed(11)
        duo.on_fit_start()
        draws[rank] = duo.draw_conditions(64)
    torch.manual_seed(11)
    expected0 = duo.draw_conditions(64)
    torch.manual_seed(rank_seed(11, 1))
    expected1 = duo.draw_conditions(64)
    for got, want in ((draws[0], expected0), (draws[1], expected1)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(draws[0][1], draws[1][1])


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_lr_schedules_follow_max_steps_of_a_real_trainer(single: StyleTransferModule, schedule: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """cosine: lr/2 at half of max_steps, 0 at max_steps; step: ×0.1 from 2/3 of max_steps on."""
    import warnings

    import lightning as L

    trainer = L.Trainer(max_steps=30, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    monkeypatch.setattr(single, "_trainer", trainer)
    monkeypatch.setitem(single.hparams, "lr_schedule", schedule)
    config = single.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lr0 = single.hparams.lr
    lrs = [opt.param_groups[0]["lr"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no optimizer.step() here: only the schedule is read
        for _ in range(30):
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(lr0)
    if schedule == "cosine":
        assert lrs[15] == pytest.approx(lr0 / 2) and lrs[30] == pytest.approx(0.0, abs=1e-12)
        assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    else:
        assert lrs[19] == pytest.approx(lr0) and lrs[20] == pytest.approx(lr0 * 0.1) and lrs[30] == pytest.approx(lr0 * 0.1)
