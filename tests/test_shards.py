"""Shard writer round trip, corrupt input, workers, resume, and the data module's streams."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.datamodule import ContentDataModule
from pipeline.common.image_sources import image_files, skimage_photo
from pipeline.__main__ import main as cli
from pipeline.data import shard_writer as writer, shards
from pipeline.data.shards import build_shards
from data_helpers import corrupt_a_sample, read_tar


def make_photos(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 300 + 37 * i, 700 - 20 * i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img.{i}.jpg" if i == 0 else folder / f"img{i}.png")
    return folder


def test_round_trip_keys_sizes_and_corrupt_file_counted(tmp_path, capsys):
    src = make_photos(tmp_path / "src")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (src / "notes.txt").write_text("not an image, not even listed")
    assert cli(["shards", "--src", str(src), "--out", str(tmp_path / "out"), "--val_fraction", "0.2", "--max_side", "256", "--min_shards", "3"]) == 0
    out = capsys.readouterr()
    assert "skipped broken" in out.err
    lines = dict(line.split(": ", 1) for line in out.out.strip().splitlines())
    assert lines["train"].endswith("1 skipped") or lines["val"].endswith("1 skipped")
    members = {}
    for tar in sorted((tmp_path / "out").glob("*.tar")):
        members.update(read_tar(tar))
    keys = sorted(m.rsplit(".", 1)[0] for m in members)
    assert keys == sorted(["img_0", "img1", "img2", "img3", "img4", "img5"])  # dots removed from keys
    assert len(list((tmp_path / "out").glob("train-*.tar"))) >= 3
    for data in members.values():
        im = Image.open(io.BytesIO(data))
        assert im.format == "JPEG" and im.mode == "RGB" and min(im.size) == 256


def test_rewriting_replaces_old_shards(tmp_path):
    src = make_photos(tmp_path / "src", n=4)
    build_shards(src, tmp_path / "out", min_shards=4, progress=False)
    stats = build_shards(src, tmp_path / "out", min_shards=1, progress=False)
    assert len(list((tmp_path / "out").glob("train-*.tar"))) == stats["train"].shards == 1


def test_missing_source_and_empty_source_fail_clearly(tmp_path, capsys):
    assert cli(["shards", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["shards", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "has no images (.bmp" in capsys.readouterr().err
    assert cli(["shards", "--src", str(make_photos(tmp_path / "src", n=1)), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "workers must be ≥ 1" in capsys.readouterr().err


def make_folder(folder, n=29):
    """n small photos (short sides 30..) plus one corrupt file, sorted in among them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (30 + i, 50, 3), dtype=np.uint8))
        img.save(folder / (f"p{i:02d}.png" if i % 2 else f"p{i:02d}.jpg"))
    (folder / "p07x.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def tars(out):
    """{name: bytes} of every shard in `out`."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def counting_encoder(monkeypatch, fail_at=None):
    """Count calls to the encoder (workers=1 runs it in-process); raise a Ctrl-C-like error at call `fail_at`."""
    calls, real = [], writer.encode_photo

    def encode(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "encode_photo", encode)
    return calls


class Interrupted(BaseException):
    """Like KeyboardInterrupt: not an unreadable image, so it stops the run."""


def split(folder, out, **kw):
    items = [(shards.sample_key(p, folder), p) for p in image_files(folder, recursive=True)]
    kw = {"max_side": 32, "min_shards": 1, "max_per_shard": 8, "progress": False, "workers": 1, **kw}
    return writer.write_split(items, out, "train", **kw)


def test_one_or_two_workers_write_identical_shards_and_report_the_corrupt_file(tmp_path, capsys):
    src = make_folder(tmp_path / "src")
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        args = ["--max_side", "32", "--min_shards", "3", "--max_per_shard", "8", "--val_fraction", "0.2"]
        assert cli(["shards", "--src", str(src), "--out", str(out), "--workers", str(workers), *args]) == 0
        printed = capsys.readouterr()
        assert printed.err.count("skipped p07x: UnidentifiedImageError") == 1
        assert f"img/s, workers={workers})" in printed.out and "1 skipped" in printed.out
        outputs.append(tars(out))
    assert len(outputs[0]) >= 4 and outputs[0] == outputs[1]  # same names, same bytes
    keys = sorted(m.rsplit(".", 1)[0] for tar in (tmp_path / "w2").glob("*.tar") for m in read_tar(tar))
    assert keys == sorted(f"p{i:02d}" for i in range(29))


def test_an_interrupted_run_resumes_without_redoing_finished_shards(tmp_path, monkeypatch):
    src = make_folder(tmp_path / "src")
    reference = split(src, tmp_path / "ref")
    out = tmp_path / "out"
    counting_encoder(monkeypatch, fail_at=12)  # 30 files, 8 per shard: dies inside the second shard
    with pytest.raises(Interrupted):
        split(src, out)
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar"]
    (out / ".train-000002.tar.tmp").write_bytes(b"left by a kill -9")  # no except clause runs then
    kept = (out / "train-000000.tar").stat()

    calls = counting_encoder(monkeypatch)
    stats = split(src, out)
    assert len(calls) == 30 - 8 and (stats.reused, stats.written) == (1, 3)
    assert (out / "train-000000.tar").stat().st_ino == kept.st_ino  # kept, not rewritten
    assert (out / "train-000000.tar").stat().st_mtime_ns == kept.st_mtime_ns
    assert tars(out) == tars(tmp_path / "ref") and not list(out.glob(".*tmp"))
    assert stats.skipped_files == reference.skipped_files and stats.images == reference.images == 29

    (out / "train-000002.tar").unlink()  # a lost shard: only it is encoded again
    calls.clear()
    stats = split(src, out)
    assert len(calls) == 8 and (stats.reused, stats.written) == (3, 1) and tars(out) == tars(tmp_path / "ref")
    assert split(src, out).written == 0


def test_changed_settings_or_files_reencode_what_they_affect(tmp_path, monkeypatch):
    src = make_folder(tmp_path / "src")
    out = tmp_path / "out"
    split(src, out)
    calls = counting_encoder(monkeypatch)
    split(src, out, max_side=24)  # new settings: every shard
    assert len(calls) == 30
    for data in (m for tar in out.glob("*.tar") for m in read_tar(tar).values()):
        assert min(Image.open(io.BytesIO(data)).size) == 24

    for p in image_files(src, recursive=True)[-7:]:  # 23 files left: shards of 8, 8, 7
        p.unlink()
    calls.clear()
    stats = split(src, out, max_side=24)
    assert len(calls) == 7 and (stats.reused, stats.written) == (2, 1)  # only the shard that changed
    assert sorted(p.name for p in out.glob("train-*")) == [f"train-00000{i}.tar" for i in range(3)]
    assert sorted(p.name for p in out.glob(".*")) == [f".train-00000{i}.tar.json" for i in range(3)]

    Image.new("RGB", (60, 40), "red").save(src / "p01.png")  # an edited photo: its shard only
    calls.clear()
    stats = split(src, out, max_side=24)
    assert len(calls) == 8 and (stats.reused, stats.written) == (2, 1)
    split(src, tmp_path / "fresh", max_side=24)
    assert tars(out) == tars(tmp_path / "fresh")  # no stale shard survived any of the changes


def test_datamodule_streams_crops_and_fixed_validation(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("astronaut", "rocket", "coffee", "chelsea", "camera"):
        Image.fromarray(skimage_photo(name)).save(src / f"{name}.png")
    build_shards(src, tmp_path / "shards", val_src=src, min_shards=2, progress=False)
    dm = ContentDataModule(str(tmp_path / "shards"), image_size=48, resize=64, val_size=40, batch_size=2,
                           steps_per_epoch=5, num_workers=0)
    dm.setup("fit")
    batches = [b.images for b in dm.train_dataloader()]
    assert len(batches) == 5 and all(b.shape == (2, 3, 48, 48) and b.dtype == torch.float32 for b in batches)
    assert 0 <= float(torch.stack(batches).min()) and float(torch.stack(batches).max()) <= 1
    val1, val2 = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert sum(len(b.images) for b in val1) == 5 and all(torch.equal(a.images, b.images) for a, b in zip(val1, val2))


def test_datamodule_without_shards_names_the_fix(tmp_path):
    dm = ContentDataModule(str(tmp_path), image_size=32)
    with pytest.raises(FileNotFoundError, match="make shards"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="resize"):
        ContentDataModule(image_size=64, resize=32)


def _photo_shards(tmp_path, names=("astronaut", "rocket", "coffee", "chelsea", "camera")):
    src = tmp_path / "src"
    src.mkdir()
    for name in names:
        Image.fromarray(skimage_photo(name)).save(src / f"{name}.png")
    build_shards(src, tmp_path / "shards", val_src=src, min_shards=1, progress=False)
    return tmp_path / "shards"


@pytest.mark.slow
def test_corrupt_sample_inside_a_shard_is_skipped_warned_and_counted(tmp_path):
    shards = _photo_shards(tmp_path)
    bad_key = corrupt_a_sample(next(shards.glob("train-*.tar")))
    dm = ContentDataModule(str(shards), image_size=32, resize=40, batch_size=2, steps_per_epoch=6, num_workers=0)
    dm.setup("fit")
    with pytest.warns(UserWarning, match=f"skipping corrupt sample '{bad_key}'.*OSError"):
        batches = list(dm.train_dataloader())
    assert len(batches) == 6  # the stream goes on past the bad sample
    assert sum(b.skipped for b in batches) >= 2  # 6 batches × 2 = 12 samples from 5 photos: seen ≥ twice
    assert all(bad_key not in b.keys for b in batches)
    assert all(b.images.shape == (2, 3, 32, 32) for b in batches)


@pytest.mark.slow
def test_resumed_epochs_draw_a_new_but_reproducible_stream(tmp_path):
    shards = _photo_shards(tmp_path)
    dm = ContentDataModule(str(shards), image_size=32, resize=40, batch_size=1, steps_per_epoch=5, num_workers=0)
    dm.setup("fit")

    def keys(epoch):
        return [b.keys[0] for b in dm._train_loader(epoch)]

    assert keys(0) == keys(0)  # reproducible
    assert keys(0) != keys(3)  # a run resumed at epoch 3 does not replay epoch 0's order
