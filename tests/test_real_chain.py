"""The chain of real artifacts, no hand-built checkpoint: `make train` → `make export` → `make archive`
→ real TorchServe → the response equals the offline CLI's output on the same photo."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ops.torchserve_local import TORCHSERVE, LocalTorchServe
from test_data_scale import write_case
from test_serving_helpers import encode_pil, rng_image
from test_train import TINY

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None or not TORCHSERVE.exists(), reason="needs Java and torchserve")]


def make(target: str, cwd: Path, *variables: str) -> str:
    res = subprocess.run(["make", "-f", str(ROOT / "Makefile"), target, f"PY={sys.executable}", *variables],
                         cwd=cwd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"make {target}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def test_trained_exported_archived_served_equals_offline(style_image, vgg_weights, tmp_path):
    work = tmp_path / "work"  # make's outputs (runs/, model_store/) land in the working directory
    work.mkdir()
    data = write_case(tmp_path / "shards", 2)
    make("train", work, f"STYLE={style_image}", f"DATA={data}", "NAME=chain",
         "ARGS=" + " ".join(TINY[2:] + ["--data.steps_per_epoch=3", "--trainer.max_steps=3"]))
    make("export", work, "NAME=chain")
    make("archive", work, "NAME=chain")
    mar = work / "model_store" / "chain.mar"
    assert mar.is_file()

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode_pil(rng_image(45, 61, seed=3), "JPEG", quality=92))
    offline = tmp_path / "offline.png"
    res = subprocess.run([sys.executable, "-m", "pipeline", "stylize", "--model",
                          str(work / "runs" / "chain" / "export" / "generator.pt2"), str(photo), str(offline)],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "step 3" in res.stdout  # the metadata of the trained checkpoint travelled into the export

    with LocalTorchServe(tmp_path / "server", work / "model_store") as server:
        server.wait_ready(["chain"])
        status, ctype, body = server.request("POST", "/predictions/chain", photo.read_bytes(),
                                             {"Content-Type": "image/jpeg"})
    assert (status, ctype) == (200, "image/png"), body[:500]
    assert body == offline.read_bytes()
