"""Every `make` command line the README and the docs show, run as written, so a default change can never
again break a documented command silently.

The lines are read from the documents' code blocks (continuations joined, `&&` chains split) and run
through bash, each group of documents (`GROUPS`) in order in a fresh working directory of its own, the
groups side by side, with HOME pointing at a folder that holds the user's files
the lines name (`~/art/*.jpg`, `~/photos/...`, `../shared/assets/...`: small images made here). Only
budgets are changed: training lines get a few steps at small sizes appended to their ARGS (later
options win), `make ablation` STEPS=2 and a small evaluation, `make eval` two photos. Lines that need
what CI lacks are adapted and say so: the `gpu` preset runs on the CPU when there is no GPU (DDP with
2 gloo processes instead of 4), S3 shards are read with `pipe:cat` from local files.

Not run here, with where they are covered: `make install` / `make test` / `make test-fast` (what CI
itself runs, and its unit tier),
`make serve` / `make stop` / `make loadtest` (a real TorchServe: tests/test_multistyle_chain.py,
test_serving_reliability.py), `make demo` (TorchServe on the starter: tests/test_starter.py), `make web`
(the page in Chromium: tests/test_web.py), `make tensorboard` (a server that never
exits), `make bench` (10 minutes: tests/test_bench_*.py run its sections), `make gpu-check` (its dry
run: tests/test_gpu_check.py). docs/scale.md's lines read
shards from cluster storage (S3, GCS, https): tests/test_data_scale.py runs each kind of source.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from examples_net import examples_state_dict

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/training.md", "docs/video.md", "docs/ablation.md", "docs/styles.md", "docs/models.md"]
# Run side by side, each group's documents in order: docs/video.md stylizes with docs/training.md's 3-style run,
# which docs/styles.md's own `trio` replaces; the README's and docs/training.md's `starry_night` runs differ.
GROUPS = [["README.md"], ["docs/training.md", "docs/video.md", "docs/styles.md"], ["docs/ablation.md", "docs/models.md"]]
# What a page takes as done before its lines (the README's run exported, as its serving section does for others)
PREPARED = {"docs/video.md": ["make export NAME=trio"]}
NOT_RUN = {"install", "test", "test-fast", "serve", "stop", "loadtest", "tensorboard", "bench", "gpu-check", "demo", "web"}
STEPS = ["--trainer.max_steps=2", "--data.steps_per_epoch=2", "--data.image_size=64", "--data.resize=80",
         "--data.val_size=64", "--data.batch_size=2", "--model.style_size=128", "--trainer.limit_val_batches=1",
         "--trainer.enable_progress_bar=false"]
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--data.num_workers=1"]

# about 30 make lines in three groups side by side; a busy machine needs more than the suite's 900 s default
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def documented_make_lines(document: Path) -> list[str]:
    """The `make …` command lines of a markdown file's fenced code blocks, continuations joined,
    `a && b` split, trailing comments kept (bash ignores them)."""
    lines, in_block, pending = [], False, ""
    for raw in document.read_text().splitlines():
        if raw.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        text = pending + raw.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        code = re.split(r"\s#\s", " " + text, maxsplit=1)[0].strip()
        lines += [part.strip() for part in code.split("&&") if part.strip().startswith("make")]
    return lines


def verb(line: str) -> str:
    words = line.split()
    return words[1] if len(words) > 1 and "=" not in words[1] else "help"


def with_args(line: str, extra: list[str]) -> str:
    """`line` with `extra` appended to its ARGS="…" (or a new ARGS)."""
    text = " ".join(extra)
    if re.search(r'ARGS="[^"]*"', line):
        return re.sub(r'ARGS="([^"]*)"', lambda m: f'ARGS="{m.group(1)} {text}"', line, count=1)
    return f'{line} ARGS="{text}"'


def adapted(line: str, shards: Path) -> str:
    """The line with a small budget, and what CI lacks replaced (see the module docstring)."""
    kind = verb(line)
    if kind == "train":
        extra = list(STEPS)
        if "PRESET=gpu" in line and not torch.cuda.is_available():
            extra += ON_CPU
            line = line.replace("--trainer.devices=4", "--trainer.devices=2")
        train = sorted(p.name for p in shards.glob("train-*.tar"))
        line = re.sub(r"TRAIN_SHARDS='pipe:aws s3 cp [^']*'",
                      f"TRAIN_SHARDS='pipe:cat {shards}/train-{{000000..{len(train) - 1:06d}}}.tar'", line)
        line = re.sub(r"VAL_SHARDS='pipe:aws s3 cp [^']*'", f"VAL_SHARDS='pipe:cat {shards}/val-000000.tar'", line)
        return with_args(line, extra)
    if kind == "ablation":
        line = re.sub(r"STEPS=\d+", "STEPS=2", line)
        fit_args = ",".join(s for s in STEPS if "max_steps" not in s)
        return with_args(line, ["--limit", "2", "--eval_size", "64", "--gatys_iters", "[2]", "--fit_args", f"[{fit_args}]"])
    if kind == "eval":
        return with_args(line, ["--limit", "2", "--size", "64", "--flicker", "1"])
    return line


def photo(path: Path, seed: int, size: tuple[int, int] = (72, 96)) -> None:
    rng = np.random.default_rng(seed)
    smooth = rng.random((size[0] // 8, size[1] // 8, 3))
    img = np.kron(smooth, np.ones((8, 8, 1))) * 0.7 + rng.random((*size, 3)) * 0.3
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path, quality=92)


def users_files(home: Path, work: Path) -> None:
    """What the documented lines name: paintings, photo folders, a pytorch/examples model, a film."""
    for i, name in enumerate(["starry_night", "the_great_wave", "udnie"]):
        photo(home / "art" / f"{name}.jpg", 100 + i)
    for i in range(12):
        photo(home / "photos" / "coco2014" / "train" / f"{i:03d}.jpg", i)
    for i in range(4):
        photo(home / "photos" / "val" / f"{i:03d}.jpg", 50 + i)
    shutil.copytree(home / "photos" / "coco2014" / "train", home / "photos" / "train")
    shared = work.parent / "shared" / "assets"  # `../shared/assets/...` as the docs name it
    shutil.copytree(home / "art", shared / "styles")
    shutil.copytree(home / "photos" / "coco2014" / "train", shared / "content" / "train")
    shutil.copytree(home / "photos" / "val", shared / "content" / "val")
    for name in ("a", "b", "c", "photo"):
        photo(work / f"{name}.jpg", ord(name[0]))
    torch.save(examples_state_dict(width=8, n_res=1), work / "candy.pth")
    from video_helpers import make_clip
    make_clip(work / "in.mp4", w=64, h=48, n=4, audio=None, rotation=None)
    shutil.copy(work / "in.mp4", work / "film.mp4")
    frames = [Image.fromarray(np.full((40, 56, 3), 40 * k, np.uint8)) for k in range(3)]
    frames[0].save(work / "clip.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)


def run_group(documents: list[str], root: Path) -> tuple[Path, list[tuple[str, float]]]:
    """Run the documents' make lines in order (their shards first) in a fresh working directory of their
    own under `root`; returns it and (line, seconds) of each line run. A failing line fails the test with
    its output."""
    home, work = root / "home", root / "case" / "work"
    work.mkdir(parents=True)
    users_files(home, work)
    lines = [line for doc in documents for line in PREPARED.get(doc, []) + documented_make_lines(ROOT / doc)]
    shards = work / "data" / "shards" / "coco"
    ordered = sorted(lines, key=lambda line: verb(line) != "shards")  # the data first, then in document order
    env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}  # precision: auto, as a user has it
    ran = []
    for line in ordered:
        if verb(line) in NOT_RUN:
            continue
        command = adapted(line, shards) + f" -f {ROOT / 'Makefile'} PY={sys.executable}"
        start = time.perf_counter()
        res = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{command}\n--- stdout ---\n{res.stdout[-2500:]}\n--- stderr ---\n{res.stderr[-4000:]}"
        ran.append((line, time.perf_counter() - start))
    return work, ran


def test_every_documented_make_line_runs(tmp_path, vgg_weights, auto_precision):
    every = [line for doc in DOCUMENTS for line in documented_make_lines(ROOT / doc)]
    assert {verb(line) for line in every} >= {"shards", "train", "export", "import", "archive", "stylize", "eval",
                                             "ablation"}, every
    assert sorted(doc for group in GROUPS for doc in group) == sorted(DOCUMENTS)
    # The groups share nothing (each has its own working directory and HOME), so they run side by side:
    # most of a line's time is a single-threaded Python start-up, and the 2-core CI machine idles otherwise.
    with ThreadPoolExecutor(len(GROUPS)) as pool:
        results = list(pool.map(lambda i: run_group(GROUPS[i], tmp_path / f"group{i}"), range(len(GROUPS))))
    for work, ran in results:
        print("\n".join(f"{seconds:6.1f} s  {line}" for line, seconds in ran))  # shown with a failure, and by -s
    (readme, _), (training, _), (other, _) = results
    assert Image.open(readme / "stylized.png").size == Image.open(readme / "photo.jpg").size  # the README's first result
    assert (readme / "model_store" / "starry_night.mar").is_file()
    assert (training / "runs" / "trio" / "export" / "generator.pt2").is_file()
    assert (training / "film-starry.mp4").is_file() and (training / "clip-udnie.gif").is_file()
    assert (other / "model_store" / "candy.mar").is_file()
    assert (other / "reports" / "ablation-starry_night" / "table.md").is_file()
    assert sum(len(ran) for _, ran in results) >= 15, results
