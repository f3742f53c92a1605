"""`make gpu-check`'s dry run end to end on the CPU: fit → export → every form through the handler →
frames/s per precision, eager and compiled; its JSON has every section, with finite numbers. Its fit is
the gpu preset's bf16-mixed autocast on the CPU: the checkpoint keeps fp32, finite master weights."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from train_helpers import ROOT


@pytest.mark.slow
def test_dry_run_writes_every_section_with_finite_numbers(shards, vgg_weights, tmp_path):
    out = tmp_path / "gpu-check.json"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--steps=2", f"--data={shards / 'shards'}",
           f"--out={out}", f"--work={tmp_path / 'work'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}"
    r = json.loads(out.read_text())
    assert r["dry_run"] and r["failures"] == []
    assert math.isfinite(r["training"]["images_per_s"]) and r["training"]["images_per_s"] > 0
    assert set(r["export"]["files"]) == {"pt", "pt2", "onnx"}
    assert [s["form"] for s in r["serving"]] == ["pt", "pt2", "onnx"]
    for form in r["serving"]:
        assert {name: e["status"] for name, e in form["images"].items()} == {"1080p": 200, "12MP": 200}
        assert all(e["same_size"] and "max_diff_vs_pt2" in e for e in form["images"].values())  # bound: failures
    rows = {(f["precision"], f["compile"]): f for f in r["frames"]["rows"]}
    assert set(rows) == {(p, c) for p in ("fp32", "bf16", "fp16") for c in (None, "eager")}
    for row in rows.values():  # fp16 may be skipped on a CPU without its kernels, with the reason
        assert row.get("skipped") or (math.isfinite(row["frames_per_s"]) and row["frames_per_s"] > 0
                                      and row["finite_output"])
    assert "fp32" in res.stdout and "frames/s" in res.stdout  # the printed table
    run = tmp_path / "work" / "runs" / "gpu-check"
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
