"""Training data at scale: exact, equal epochs for any shards × DDP ranks × workers; shards from
folders, brace patterns, URLs and pipe: commands; unreadable shards counted, never fatal."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.data.datamodule import ContentDataModule
from pipeline.data.stream_stages import MAX_CONSECUTIVE_SHARD_FAILURES
from pipeline.data.shard_writer import write_split
from pipeline.data.sources import resolve_shards
from data_helpers import LoopbackFiles, write_case

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cases")
    for n in (1, 3, 8):
        write_case(root / f"s{n}", n)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_every_rank_runs_exactly_steps_per_epoch(cases, tmp_path, world, style_image, vgg_weights):
    """The table: {1, 3, 8} shards × {0, 2} workers × {1, 2} real DDP ranks (gloo): every rank runs
    exactly steps_per_epoch batches in each of two epochs, and the samples differ between ranks,
    between the workers of a rank and between epochs. With 2 ranks, also what training draws on each:
    the same initial weights, different per-sample conditions and noise, and a step that is NaN on
    one rank only skipped by both (their weights stay equal)."""
    out = tmp_path / "probe.json"
    draws = ["--style", str(style_image)] if world == 2 else []
    proc = subprocess.run([sys.executable, "tests/epoch_probe.py", "--shards", str(cases), "--world", str(world),
                           "--port", str(29500 + 40 + world), "--out", str(out), *draws],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {int(r): v for r, v in json.loads(out.read_text()).items()}
    assert sorted(ranks) == list(range(world))
    if world == 2:
        first, second = (ranks[r].pop("draws") for r in (0, 1))
        assert first["weights"] == second["weights"], "the ranks' generators start from different weights"
        assert first["strength"] != second["strength"], "both ranks drew the same strengths"
        assert first["noise"] != second["noise"], "both ranks drew the same stability noise"
        skipped, updated = first["ddp_after"]
        assert first["ddp_after"] == second["ddp_after"], "the ranks' weights diverged"
        assert skipped != updated and first["skipped"] == second["skipped"] == 1
    for case in (f"s{n}/w{w}" for n in (1, 3, 8) for w in (0, 2)):
        per_rank = [ranks[r][case] for r in range(world)]
        counts = [[len(epoch) for epoch in epochs] for epochs in per_rank]
        assert counts == [[8, 8]] * world, f"{case}: batches per rank per epoch {counts}"
        for epochs in per_rank:
            assert all(len(batch) == 2 for epoch in epochs for batch in epoch)
            assert epochs[0] != epochs[1], f"{case}: epoch 2 replayed epoch 1"
            if case.endswith("w2"):  # the DataLoader alternates between the two workers' batches
                assert epochs[0][0::2] != epochs[0][1::2], f"{case}: both workers drew the same samples"
        if world == 2:
            assert per_rank[0] != per_rank[1], f"{case}: both ranks drew the same samples"


def test_shard_specs_resolve_or_fail_clearly(cases, tmp_path):
    folder = cases / "s3"
    assert resolve_shards(str(folder), "train") == sorted(str(p) for p in folder.glob("train-*.tar"))
    pattern = str(folder / "train-{000000..000002}.tar")
    assert resolve_shards(pattern, "train") == resolve_shards(str(folder), "train")
    assert len(resolve_shards(f"{pattern}::{folder / 'val-000000.tar'}", "train")) == 4
    with pytest.raises(FileNotFoundError, match=r"1 of 4 do not exist.*train-000003\.tar"):
        resolve_shards(str(folder / "train-{000000..000003}.tar"), "train")
    assert resolve_shards("pipe:aws s3 cp s3://bucket/train-{0..2}.tar -", "train")[2] == \
        "pipe:aws s3 cp s3://bucket/train-2.tar -"
    with pytest.raises(ValueError, match="val_shards"):
        ContentDataModule(train_shards=pattern)
    empty = tmp_path / "empty"
    write_split([], empty, "val", max_side=64, min_shards=1, max_per_shard=10, progress=False)
    (empty / "val-000000.tar").write_bytes(b"")  # a val shard with nothing in it
    dm = ContentDataModule(train_shards=pattern, val_shards=str(empty / "val-000000.tar"), image_size=32)
    with pytest.warns(UserWarning, match="unreadable shard"), pytest.raises(ValueError, match="no readable sample"):
        dm.setup("fit")


def test_http_shards_with_a_404_are_warned_counted_and_skipped(cases):
    with LoopbackFiles(cases / "s3") as files:
        dm = ContentDataModule(train_shards=files.url + "/train-{000000..000003}.tar",  # 000003 is a 404
                               val_shards=files.url + "/val-000000.tar", image_size=32, resize=40, val_size=32,
                               batch_size=2, steps_per_epoch=12, num_workers=0)
        dm.setup("fit")
        assert dm.val_samples == 4
        with pytest.warns(UserWarning, match=r"unreadable shard.*train-000003\.tar"):
            batches = list(dm._train_loader(0))
    assert len(batches) == 12 and sum(b.failed_shards for b in batches) >= 1
    assert len({k for b in batches for k in b.keys}) > 8  # the readable shards kept coming


def test_a_stream_with_no_readable_shard_stops_with_a_clear_error(cases):
    dm = ContentDataModule(train_shards="pipe:exit 1", val_shards=str(cases / "s1" / "val-000000.tar"),
                           image_size=32, batch_size=2, steps_per_epoch=4, num_workers=0)
    dm.setup("fit")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=f"{MAX_CONSECUTIVE_SHARD_FAILURES} shards in a row"):
        list(dm._train_loader(0))


def test_a_stream_dropped_mid_shard_ends_its_producer_even_when_a_fork_holds_the_pipe(cases):
    """The URL-shard hang at the end of a run: a validation stream cut mid-shard (limit_val_batches)
    is dropped while a DataLoader worker forked meanwhile holds the producer's pipe, so the producer
    blocks on a full pipe forever; webdataset's close waited 2 h for it. Ours kills it: closing is
    immediate. (The producer writes without end after the shard, as a big remote shard would.)"""
    import multiprocessing
    import time

    val = cases / "s1" / "val-000000.tar"
    dm = ContentDataModule(train_shards=str(val), val_shards=f"pipe:cat {val}; exec cat /dev/zero", image_size=32,
                           val_size=32, batch_size=1, num_workers=0)
    dm.val_urls = resolve_shards(dm.hparams.val_shards, "val")
    stream = iter(dm._val_dataset())
    assert len(next(stream).keys) == 1  # mid-shard: 3 samples and the endless tail unread
    holder = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
    holder.start()  # what a persistent DataLoader worker does: it inherits the pipe's read end
    try:
        closing = threading.Thread(target=stream.close, daemon=True)
        start = time.monotonic()
        closing.start()
        closing.join(timeout=30)
        assert not closing.is_alive(), "closing the stream waits on its producer (the end-of-run hang)"
        assert time.monotonic() - start < 10
    finally:
        holder.kill()
