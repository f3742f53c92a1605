"""Real training runs in the configurations users scale to: one DDP run with DataLoader workers through
`make train` from shards over HTTP and `pipe:` with a missing one, resumed; two torchrun "nodes"; bf16-mixed
and the step LR.
Runs from remote shards use DataLoader workers: a run must end within seconds of its last step."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from data_helpers import LoopbackFiles, write_case
from train_helpers import TINY, scalars

ROOT = Path(__file__).resolve().parents[1]
TEARDOWN_BOUND_S = 30  # seconds from "`Trainer.fit` stopped" to the process's exit (a few on an idle machine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_ckpt(runs: Path, name: str) -> dict:
    return torch.load(runs / name / "checkpoints" / "last.ckpt", weights_only=True)


def run(cmd: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)}\n--- stderr ---\n{res.stderr[-4000:]}"
    return res


def run_to_the_end(cmd: list[str], timeout: int = 600) -> tuple[str, float]:
    """Run `cmd` (output merged) and return its log and the seconds from the fit's last-step message
    to the process's exit (the output is read in a thread: a hung run prints nothing)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, stopped = [], []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "`Trainer.fit` stopped" in line:
                stopped.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
    ended = time.monotonic()
    reader.join(timeout=10)
    log = "".join(lines)
    assert proc.returncode == 0 and stopped, f"{' '.join(cmd)} (exit {proc.returncode})\n{log[-4000:]}"
    return log, ended - stopped[0]


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory) -> Path:
    # 24 validation photos: a val shard larger than a pipe's buffer, so a validation stream cut mid-shard
    # (limit_val_batches) leaves a remote shard's producer with output nobody reads (the end-of-run hang)
    return write_case(tmp_path_factory.mktemp("data") / "s3", 3, n_val=24)


@pytest.mark.slow
def test_make_train_ddp_from_url_shards_with_a_404_ends_and_resumes(three_shards, style_image, vgg_weights, tmp_path):
    """One real DDP run for what users scale to. `make train` with 2 gloo ranks × 2 DataLoader workers each;
    TRAIN_SHARDS as URLs from a loopback HTTP server (3 shards that do not divide over 2 ranks × 2 workers,
    and a missing one: warned about, counted in TensorBoard), VAL_SHARDS a `pipe:` command. Two epochs of
    exactly steps_per_epoch steps; the run exits within seconds of its last step (it used to wait on the
    cut validation stream's producer); `CKPT=` resumes it for a third epoch from the saved step."""
    args = TINY[2:] + ["--data.num_workers=2", "--data.steps_per_epoch=3", "--trainer.max_steps=-1",
                       "--trainer.strategy=ddp", "--trainer.devices=2", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    run_dir, last = tmp_path / "runs" / "ddp", tmp_path / "runs" / "ddp" / "checkpoints" / "last.ckpt"
    with LoopbackFiles(three_shards) as files:
        make = ["make", "train", f"PY={sys.executable}", f"STYLE={style_image}", "NAME=ddp",
                f"TRAIN_SHARDS={files.url}/train-{{000000..000003}}.tar", f"VAL_SHARDS=pipe:cat {three_shards}/val-000000.tar"]
        log, teardown = run_to_the_end(make + ["ARGS=" + " ".join(args + ["--trainer.max_epochs=2"])], timeout=900)
        assert "MEMBER: 2/2" in log, "rank 1 never joined the process group"
        ckpt = last_ckpt(tmp_path / "runs", "ddp")
        assert (ckpt["global_step"], ckpt["epoch"]) == (6, 1)
        failed = scalars(run_dir, "data/failed_shards")
        assert failed and failed[-1][1] >= 1, "the 404 shard was not counted"
        print(f"exited {teardown:.1f} s after its last step")
        assert teardown < TEARDOWN_BOUND_S, f"the run took {teardown:.0f} s to exit after its last step:\n{log[-3000:]}"
        run_to_the_end(make + [f"CKPT={last}", "ARGS=" + " ".join(args + ["--trainer.max_epochs=3"])], timeout=900)
    resumed = last_ckpt(tmp_path / "runs", "ddp")
    assert (resumed["global_step"], resumed["epoch"]) == (9, 2)
    assert min(s for s, _ in scalars(run_dir, "train/total") if s > 6) == 7, "the resumed run did not start at the saved step"
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == 9


@pytest.mark.slow
def test_two_torchrun_nodes_train_from_url_shards(three_shards, style_image, vgg_weights, tmp_path):
    """Multi-node on one machine: two `torchrun --nnodes=2` "nodes" (rendezvous on 127.0.0.1, gloo)
    train from HTTP shards with a DataLoader worker each; both finish and the checkpoint has the
    configured step."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    port = free_port()
    with LoopbackFiles(three_shards) as files:
        fit = ["-m", "pipeline", "fit", *TINY, f"--model.style_image={style_image}",
               f"--data.train_shards={files.url}/train-{{000000..000002}}.tar",
               f"--data.val_shards={files.url}/val-000000.tar", "--data.num_workers=1", "--data.steps_per_epoch=2", "--trainer.max_steps=4",
               "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=1", "--trainer.num_nodes=2",
               f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.logger.init_args.name=nodes"]
        nodes = [subprocess.Popen([torchrun, "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                                   "--master_addr=127.0.0.1", f"--master_port={port}", *fit], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
                 for rank in (0, 1)]
        try:
            logs = [node.communicate(timeout=600)[0] for node in nodes]
        finally:
            for node in nodes:
                if node.poll() is None:
                    node.kill()
    for rank, (node, log) in enumerate(zip(nodes, logs)):
        assert node.returncode == 0, f"node {rank}:\n{log[-3000:]}"
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log, log[-2000:]
    assert last_ckpt(tmp_path / "runs", "nodes")["global_step"] == 4


@pytest.mark.slow
def test_step_lr_drops_the_lr_at_two_thirds(three_shards, style_image, vgg_weights, tmp_path):
    """lr_schedule=step drops the LR ×0.1 at 2/3 of max_steps. (The gpu preset's bf16-mixed autocast on
    the CPU, fp32 master weights: tests/test_gpu_check.py's fit; the Gram in fp32: test_losses.py.)"""
    run([sys.executable, "-m", "pipeline", "fit", *TINY, f"--model.style_image={style_image}",
         f"--data.data_dir={three_shards}", "--trainer.precision=32-true", "--model.lr_schedule=step",
         "--trainer.max_steps=3", "--data.steps_per_epoch=3",
         f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.logger.init_args.name=step"])
    ckpt = last_ckpt(tmp_path / "runs", "step")
    assert ckpt["global_step"] == 3
    lrs = dict(scalars(tmp_path / "runs" / "step", "lr-Adam"))
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(1e-4)  # step_size = 2 * 3 // 3 = 2
    assert ckpt["lr_schedulers"][0]["step_size"] == 2 and ckpt["lr_schedulers"][0]["gamma"] == pytest.approx(0.1)


@pytest.mark.slow
def test_bare_make_train_runs_on_the_built_in_style_and_photos(vgg_weights, tmp_path):
    """`make train` with nothing else: scikit-image's hubble_deep_field as the style, its public-domain
    photos (built into data/shards/skimage on first use) as the content, runs/hubble_deep_field/."""
    res = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "train", f"PY={sys.executable}",
                          "ARGS=" + " ".join(TINY[2:] + ["--data.steps_per_epoch=2", "--trainer.max_steps=2"])],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = last_ckpt(tmp_path / "runs", "hubble_deep_field")
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["style_image"] == "skimage:hubble_deep_field"
    assert sorted(p.name for p in (tmp_path / "data" / "shards" / "skimage").glob("*.tar"))
