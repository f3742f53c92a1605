"""Every `make` command line the README and the docs show, checked as written, so a default change can never
again break a documented command silently.

The lines are read from the documents' code blocks (continuations joined, `&&` chains split). Each is
expanded by `make -n` in an empty working directory (as a user's shell would run it, `~` their home): its
guard runs and passes (`test -n "$(NAME)"`, the preset's file), and the `python -m pipeline …` command it
expands to is parsed by that command's own parser without running it (`--print_config`: jsonargparse for the
tools, LightningCLI for `fit`), so every verb, make variable, option and option value a document names
exists. The runs a line names (`runs/X`, `archive --name X`) are ones an earlier line of its group of
documents makes (`GROUPS`: `make train`'s run name, `make import`'s NAME, `make demo`'s starter).

Run for real here only what no other test runs: docs/ablation.md's `make shards` then `make ablation`, whose
training half launches real fits nowhere else (two of its five variants, a few steps each). Where the other
lines' code paths run for real:
- `make train` alone (built-in style and photos): test_train_scale.py::test_bare_make_train_runs_on_the_built_in_style_and_photos
- `make train STYLE=a,b DATA=… ARGS=--model.strength_control=true` → `make export` (pt, pt2, onnx) →
  `make archive` → TorchServe (`make serve`'s launcher): test_multistyle_chain.py; `make stop`,
  `make loadtest`: test_serving_reliability.py
- `PRESET=gpu` (its fit, bf16-mixed, on the CPU): test_gpu_check.py; DDP ranks, DataLoader workers,
  `TRAIN_SHARDS`/`VAL_SHARDS` from URLs and `pipe:`, `CKPT=` resume: test_train_scale.py (`make train`)
- `--model.norm=batch`, `--model.arch=multiscale`, a resumed run: test_train.py; zero padding: test_generators.py
- `make train FROM=…` (a style added to a trained run) → export → stylize → eval: test_adapt.py
- `make distill NAME=…` → export → stylize: test_distill.py; `make web NAME=starter` with its twin: test_starter_fast.py
- `make shards`: test_shards.py; `make stylize` on a photo, a folder, a film, a GIF: test_stylize.py, test_video.py
- `make eval`: test_evaluation_flicker.py::test_cli_measures_the_requested_style, test_evaluation.py
- `make import` and its `make archive`: test_import_onnx.py::test_import_then_archive_serve_and_stylize
- `make serve ENGINE=ray NAME=…`, `make stop ENGINE=ray`: test_serving_ray.py; `make loadtest ENGINE=ray`: test_ray_cluster.py
- `make demo`, `make web`: test_starter.py, test_web.py; `make bench`: test_bench_*.py; `make gpu-check`:
  test_gpu_check.py; `make install` / `make test` / `make test-fast`: CI itself (.ci/run); `make tensorboard`:
  a server that never exits (its dry run only).
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/compact.md", "docs/training.md", "docs/video.md", "docs/ablation.md", "docs/styles.md",
             "docs/models.md", "docs/scale.md"]
# Each group's documents in order: docs/video.md stylizes with docs/training.md's runs, docs/styles.md
# makes its own `trio`; the README's runs stand alone.
GROUPS = [["README.md", "docs/compact.md"], ["docs/training.md", "docs/video.md", "docs/styles.md"],
          ["docs/ablation.md", "docs/models.md"], ["docs/scale.md"]]
STEPS = ["--data.steps_per_epoch=2", "--data.image_size=64", "--data.resize=80", "--data.val_size=64",
         "--data.batch_size=2", "--model.style_size=128", "--trainer.limit_val_batches=1",
         "--trainer.enable_progress_bar=false"]


def documented_make_lines(document: Path) -> list[str]:
    """The `make …` command lines of a markdown file's fenced code blocks, continuations joined,
    `a && b` split, trailing comments dropped."""
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


def dry_run(line: str, work: Path, home: Path) -> list[str]:
    """The commands `make -n` prints for `line` (run by bash in `work`, HOME=`home`), continuations joined;
    the guards among them (`test …`) are run and must pass."""
    res = subprocess.run(["bash", "-c", f"{line} -n -f {ROOT / 'Makefile'} PY=python"], cwd=work, capture_output=True,
                         text=True, env={**os.environ, "HOME": str(home)}, timeout=60)
    assert res.returncode == 0, f"{line}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    commands = [c.strip() for c in re.sub(r"\\\n", " ", res.stdout).splitlines() if c.strip()]
    for guard in (c for c in commands if c.startswith("test ")):
        checked = subprocess.run(["bash", "-c", guard], cwd=work, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, f"{line}: its guard fails: {guard}\n{checked.stdout}"
    return commands


def parses(argv: list[str]) -> str:
    """`python -m pipeline ARGV` parsed by the command's own parser, nothing run (a tool's `command()`
    stands in for by a function of its signature that does nothing; `fit --print_config`); returns what
    it printed."""
    from jsonargparse import auto_cli

    from pipeline.__main__ import TOOLS, TRAINING, dashes_to_underscores, tool
    from pipeline.train.cli import run_cli

    cmd, rest = argv[0], argv[1:]
    assert cmd in TOOLS or cmd in TRAINING, f"unknown command {cmd!r}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as info:
        if cmd in TOOLS:
            auto_cli(functools.wraps(tool(cmd))(lambda *args, **kwargs: sys.exit(0)), args=dashes_to_underscores(rest),
                     prog=f"python -m pipeline {cmd}")
        else:
            run_cli([cmd, *rest, "--print_config"])
    assert info.value.code in (0, None), f"python -m pipeline {shlex.join(argv)}\n{out.getvalue()[-3000:]}"
    return out.getvalue()


@pytest.fixture
def parse_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_allocator_tuning: None) -> None:
    """LightningCLI in-process: no pytest arguments in sys.argv, relative paths under tmp_path, torch's
    process-wide matmul precision (the gpu preset sets it) restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline"])
    precision = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(precision)


def test_every_documented_make_line_expands_passes_its_guard_and_parses(tmp_path, parse_only):
    from pipeline.train.cli import presets

    assert sorted(doc for group in GROUPS for doc in group) == sorted(DOCUMENTS)
    home, work = tmp_path / "home", tmp_path / "work"
    (work / "logs").mkdir(parents=True)  # `make demo` redirects its sub-make's output there, even under -n
    home.mkdir()
    every, parsed = [], 0
    for group in GROUPS:
        made = {"starter"} if "README.md" in group else set()  # `make demo` exports the starter model
        for line in (line for doc in group for line in documented_make_lines(ROOT / doc)):
            every.append(line)
            for command in dry_run(line, work, home):
                if not command.startswith("python -m pipeline "):
                    continue
                argv = shlex.split(command)[3:]
                parses(argv)
                parsed += 1
                used = re.findall(r'runs/([^/"\s]+)', command) + (argv[2:3] if argv[:2] == ["archive", "--name"] else [])
                assert set(used) <= made, f"{line}: names runs {sorted(set(used) - made)} no earlier line of {group} makes"
                if argv[0] == "fit":
                    made.add(re.search(r'--trainer\.logger\.init_args\.name=(\S+)', command).group(1).strip('"'))
                elif argv[0] == "import":
                    made.add(argv[argv.index("--name") + 1])
    assert {verb(line) for line in every} >= {"shards", "train", "distill", "export", "import", "archive", "stylize",
                                             "eval", "ablation", "demo", "web", "serve"}, every
    assert parsed >= 25, parsed
    for preset in presets():  # every preset the Makefile offers, documented or not
        (command,) = (c for c in dry_run(f"make train PRESET={preset}", work, home) if c.startswith("python -m pipeline"))
        assert f"{preset}.yaml" in command and "model:" in parses(shlex.split(command)[3:])


def photo(path: Path, seed: int, size: tuple[int, int] = (72, 96)) -> None:
    rng = np.random.default_rng(seed)
    smooth = rng.random((size[0] // 8, size[1] // 8, 3))
    img = np.kron(smooth, np.ones((8, 8, 1))) * 0.7 + rng.random((*size, 3)) * 0.3
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path, quality=92)


@pytest.mark.slow
def test_the_ablation_page_runs_as_written(tmp_path, vgg_weights):
    """docs/ablation.md as a user runs it, from `../shared/assets` (small images made here): `make shards`
    then `make ablation` with a small budget appended (later options win): STEPS=2, two variants (a
    residual and a multiscale one, two norms), a small evaluation. Its report has the table."""
    work, shared = tmp_path / "case" / "work", tmp_path / "case" / "shared" / "assets"
    work.mkdir(parents=True)
    photo(shared / "styles" / "starry_night.jpg", 100)
    for i in range(12):
        photo(shared / "content" / "train" / f"{i:03d}.jpg", i)
    for i in range(4):
        photo(shared / "content" / "val" / f"{i:03d}.jpg", 50 + i)
    lines = documented_make_lines(ROOT / "docs" / "ablation.md")
    assert [verb(line) for line in lines] == ["shards", "ablation"]
    fit_args = ",".join(STEPS)
    budget = f'ARGS="--only [res-in,ms-bn] --limit 2 --eval_size 64 --gatys_iters [2] --fit_args [{fit_args}]"'
    for line in (lines[0], re.sub(r"STEPS=\d+", "STEPS=2", lines[1]) + " " + budget):
        command = f"{line} -f {ROOT / 'Makefile'} PY={sys.executable}"
        res = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True, timeout=900,
                             env={**os.environ, "HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"})
        assert res.returncode == 0, f"{command}\n--- stdout ---\n{res.stdout[-2500:]}\n--- stderr ---\n{res.stderr[-4000:]}"
    table = (work / "reports" / "ablation-starry_night" / "table.md").read_text()
    assert "| residual / instance norm / reflect padding | 2 |" in table and "| multiscale / batch norm / reflect padding | 2 |" in table
    assert "Gatys" in table
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["ablation-starry_night-ms-bn", "ablation-starry_night-res-in"]
