"""Real short training runs through the real CLI (`python -m pipeline fit`), real VGG weights."""
from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from train_helpers import ROOT, TINY, fit, fit_cmd, scalars

def val_loss_before_after(ckpt_path: Path, shard_dir: Path) -> tuple[float, float]:
    """Loss on the fixed validation photos of a freshly initialized vs the trained generator."""
    from pipeline.data.datamodule import ContentDataModule
    from pipeline.train.module import StyleTransferModule
    hp = torch.load(ckpt_path, weights_only=True)["hyper_parameters"]
    dm = ContentDataModule(str(shard_dir), image_size=64, val_size=64, batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = torch.cat([b.images for b in dm.val_dataloader()])
    torch.manual_seed(0)
    fresh = StyleTransferModule(**{k: v for k, v in hp.items() if not k.startswith("_")}).eval()
    trained = StyleTransferModule.load_from_checkpoint(ckpt_path, weights_only=True).eval()
    with torch.no_grad():
        before, after = fresh._terms(batch)["total"].item(), trained._terms(batch)["total"].item()
    print(f"val loss {before:.1f} -> {after:.1f}")
    return before, after


@pytest.mark.slow
def test_short_run_learns_logs_and_resumes(shards, style_image, vgg_weights):
    fit(shards, style_image, "--trainer.max_steps=24", "--data.steps_per_epoch=8", "--trainer.callbacks.every_n_steps=10")
    run = shards / "runs" / "tiny"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 24
    assert not any(k.startswith("loss.") for k in ckpt["state_dict"])  # frozen VGG stays out
    assert any(p.name.startswith("best-") for p in (run / "checkpoints").iterdir())
    assert (run / "config.yaml").exists()
    assert len(scalars(run, "val/total")) == 3  # one validation per epoch
    untrained, trained = val_loss_before_after(run / "checkpoints" / "last.ckpt", shards / "shards")
    assert trained < 0.7 * untrained, f"validation loss did not decrease: {untrained:.1f} → {trained:.1f}"
    acc = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert {"style", "content|stylized"} <= set(acc.Tags()["images"])
    assert any(t.startswith("train/") and "samples_per_sec" in t for t in acc.Tags()["scalars"])
    assert scalars(run, "train/device/flops_per_sec")  # the module's flops_per_batch reached ThroughputMonitor
    assert scalars(run, "lr-Adam")

    # Resume: CKPT= continues from the saved step, with the optimizer state.
    fit(shards, style_image, "--trainer.max_steps=30", "--data.steps_per_epoch=8",
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 30
    steps = [s for s, _ in scalars(run, "train/total")]
    assert min(s for s in steps if s > 24) == 25, "resumed run did not start at the saved step"
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == 30


@pytest.mark.slow
def test_missing_style_image_fails_clearly(shards, vgg_weights):
    cmd = [sys.executable, "-m", "pipeline", "fit", *TINY, "--model.style_image=/nonexistent.jpg",
           f"--data.data_dir={shards / 'shards'}", "--trainer.max_steps=1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "style image /nonexistent.jpg does not exist" in res.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message_and_no_nan_checkpoint(shards, style_image, vgg_weights):
    cmd = [sys.executable, "-m", "pipeline", "fit", *TINY, f"--model.style_image={style_image}",
           "--model.style_weight=.nan", "--model.max_nonfinite=3", "--trainer.max_steps=10",
           "--data.steps_per_epoch=2", f"--trainer.logger.init_args.save_dir={shards / 'runs'}",
           "--trainer.logger.init_args.name=nan", f"--data.data_dir={shards / 'shards'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "non-finite for 3 consecutive steps" in res.stderr, res.stderr[-3000:]
    for ckpt in (shards / "runs" / "nan").rglob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_continues_step_optimizer_schedule_and_data(shards, style_image, vgg_weights,
                                                                               tmp_path):
    """kill -9 a real run; `CKPT=last.ckpt` resumes at the saved step with the Adam and cosine-LR
    state; a corrupt sample inside a shard is skipped and counted in TensorBoard meanwhile."""
    from data_helpers import corrupt_a_sample
    shutil.copytree(shards / "shards", tmp_path / "shards")
    corrupt_a_sample(sorted((tmp_path / "shards").glob("train-*.tar"))[0])
    common = ["--data.steps_per_epoch=4", "--model.lr_schedule=cosine", "--trainer.callbacks.every_n_steps=0"]
    ckpt_path = tmp_path / "runs" / "kill" / "checkpoints" / "last.ckpt"
    log = open(tmp_path / "killed.log", "wb")  # a file, not a pipe: a full pipe would block the run
    proc = subprocess.Popen(fit_cmd(tmp_path, style_image, "--trainer.max_steps=400", *common, name="kill"), cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt_path.exists() and torch.load(ckpt_path, weights_only=True)["global_step"] >= 8:
                break  # (atomic writes: the file is always whole, never half-written)
            time.sleep(0.2)
        assert proc.poll() is None, "training ended early:\n" + (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.7)  # land the kill somewhere inside the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    killed = torch.load(ckpt_path, weights_only=True)
    step, epoch = killed["global_step"], killed["epoch"]
    assert step >= 8 and step % 4 == 0
    assert killed["lr_schedulers"][0]["last_epoch"] == step and killed["lr_schedulers"][0]["T_max"] == 400

    fit(tmp_path, style_image, f"--trainer.max_steps={step + 8}", *common, f"--ckpt_path={ckpt_path}", name="kill")
    resumed = torch.load(ckpt_path, weights_only=True)
    assert resumed["global_step"] == step + 8 and resumed["epoch"] > epoch  # the data stream went on
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == step + 8  # Adam moments carried over
    sched = resumed["lr_schedulers"][0]
    assert sched["last_epoch"] == step + 8 and sched["T_max"] == 400  # the original cosine, not a fresh one
    run = tmp_path / "runs" / "kill"
    lrs = dict(scalars(run, "lr-Adam"))
    expected = 1e-3 * (1 + math.cos(math.pi * step / 400)) / 2  # the LR in force at the first resumed step
    assert abs(lrs[step] - expected) < 1e-8, (lrs[step], expected)
    assert min(s for s, _ in scalars(run, "train/total") if s > step) == step + 1
    skipped = scalars(run, "data/skipped_samples")
    assert skipped and skipped[-1][1] >= 1, "the corrupt sample was not counted in TensorBoard"


@pytest.mark.slow
def test_flops_per_batch_against_a_hand_count_of_the_layers(style_image, vgg_weights):
    """What ThroughputMonitor's FLOP/s uses, against 2·Cin·Cout·k²·Hout·Wout summed over the convolutions
    forward hooks see run, plus the Gram matrices' 2·C²·H·W (forward, and twice that backward)."""
    from pipeline.data.stream_stages import ContentBatch
    from pipeline.loss.losses import STYLE_LAYERS
    from pipeline.train.module import StyleTransferModule

    module = StyleTransferModule(str(style_image), style_size=64)
    x = torch.rand(2, 3, 32, 48)

    def conv_flops(fn):
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append(
            2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * o.shape[-2] * o.shape[-1]))
            for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        try:
            return seen, fn()
        finally:
            for h in hooks:
                h.remove()

    gen, y = conv_flops(lambda: module.generator(x[:1]))  # grad enabled: the training layers
    vgg_out, feats = conv_flops(lambda: module.loss.vgg(y))
    vgg_content, _ = conv_flops(lambda: module.loss.vgg(x[:1], ["relu2_2"]))
    assert (len(gen), len(vgg_out), len(vgg_content)) == (16, 10, 4)
    grams = sum(2 * f.shape[1] ** 2 * f.shape[2] * f.shape[3] for k, f in feats.items() if k in STYLE_LAYERS)
    forward = sum(gen) + sum(vgg_out) + sum(vgg_content) + grams
    # backward: the generator's weights and inputs (not the photo's), the VGG's inputs only (frozen
    # weights, no grad for the content branch), the Gram's two operands
    backward = 2 * sum(gen) - gen[0] + sum(vgg_out) + 2 * grams
    module.on_train_batch_start(ContentBatch(x, 0, ["a", "b"]), 0)
    assert module.flops_per_batch == 2 * (forward + backward)
    assert all(p.grad is None for p in module.parameters())  # counted on a copy: the model's grads untouched
    module.on_validation_batch_start(ContentBatch(x, 0, ["a", "b"]), 0)
    # validation runs the generator's inference decoder (same function, regrouped arithmetic)
    assert module.flops_per_batch == pytest.approx(2 * forward, rel=0.02)


@pytest.mark.slow
def test_stability_regularizer_trains_and_is_logged(shards, style_image, vgg_weights):
    """--model.stability_weight adds the temporal-stability term to training (not to validation)."""
    fit(shards, style_image, "--trainer.max_steps=4", "--data.steps_per_epoch=2", "--model.stability_weight=50",
        name="stable")
    run = shards / "runs" / "stable"
    stab = scalars(run, "train/stability")
    assert len(stab) >= 2 and all(math.isfinite(v) and v > 0 for _, v in stab)
    assert scalars(run, "val/total") and not scalars(run, "val/stability")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["stability_weight"] == 50


@pytest.mark.slow
@pytest.mark.parametrize("override", ["--model.norm=batch", "--model.arch=multiscale"])
def test_paper_baselines_train_on_the_presets_with_the_control_turned_off(shards, style_image, vgg_weights, override):
    """The presets turn the strength control on; the paper's baselines cannot have it (it conditions
    instance norm): they train, a warning says the control is off, the checkpoint records it."""
    tmp = shards
    res = fit(tmp, style_image, override, "--trainer.max_steps=1", "--data.steps_per_epoch=1", name=override[8:].replace("=", "-"))
    assert "strength control turned off" in res.stderr
    ckpt = torch.load(tmp / "runs" / override[8:].replace("=", "-") / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["strength_control"] is False
    assert not any("strength" in k for k in ckpt["state_dict"])


@pytest.mark.slow
def test_a_teardown_past_its_bound_ends_the_process_with_the_stacks():
    """TeardownBound (base.yaml): armed at train end, a teardown that does not finish in time ends the
    process with status 1 and every thread's stack; one that finishes disarms it."""
    code = ("import time; from pipeline.train.callbacks import TeardownBound\n"
            "done = TeardownBound(0.5); done.on_train_end(None, None); done.teardown(None, None, 'fit')\n"
            "TeardownBound(1.5).on_train_end(None, None); time.sleep(0.2); print('still here', flush=True); time.sleep(60)")
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "still here" in res.stdout, res.stderr[-2000:]
    assert "teardown has not finished" in res.stderr and 'File "<string>", line 3' in res.stderr  # where it hung
    assert time.monotonic() - start < 30
