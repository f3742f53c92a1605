"""A Ray cluster on one host (a head and two worker nodes, ray.cluster_utils.Cluster) under `make loadtest
ENGINE=ray`: the Stylizer replicas scale up under the load and back down after it; a worker node holding
replicas is killed mid-load, and every request is still answered with a good image (none hangs, none is
lost), the deployment runs again on the node left, and it answers after it all."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.export.exporter import export_run
from serving_helpers import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

CLIENTS, REQUESTS, KILL_AFTER = 8, 60, 60  # ~80 s of load: replicas start in ~40 s on 2 busy cores


def test_one_host_cluster_scales_and_survives_a_node_kill(tmp_path):
    run = tmp_path / "runs" / "demo"
    make_checkpoint(run, width=16)  # a width-16 generator: the load is about scheduling, not the model
    export_run(run, formats=("pt2",))
    proc = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), f"PY={sys.executable}", "loadtest",
                           "ENGINE=ray", "NAME=demo", f"CLIENTS={CLIENTS}", f"REQUESTS={REQUESTS}", f"KILL_AFTER={KILL_AFTER}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "benchmarks" / "loadtest-results-ray.json").read_text())
    planned = CLIENTS * REQUESTS
    # nothing lost: every request answered, each with the right image (the load test checks size and bytes)
    assert (result["planned"], result["answered"], result["good"]) == (planned, planned, planned), result["first_errors"]
    assert (result["errors"], result["lost"], result["exceptions"]) == (0, 0, 0)
    # up under load (the autoscaler asked for more and they ran), down after it
    timeline = result["replicas_timeline"]
    assert result["max_target"] > 1 and result["max_replicas_seen"] > 1, timeline
    assert result["scaled_down"] and timeline[-1][1:] == [1, 1], timeline
    # the node was killed mid-load while it held replicas, and the replicas came back on the node left
    assert result["killed_node"] and KILL_AFTER <= result["killed_at_answer"] < planned
    assert result["replicas_at_kill"] >= 2 and result["recovered_s"] is not None, timeline
    assert result["answers_after"] == 2
    assert result["requests_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"] > 0
    print(f"\nray cluster (head + 2 worker nodes on {result['machine']}): {result['requests_per_s']} req/s, "
          f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; replicas up to {result['max_replicas_seen']}, "
          f"node killed after {result['killed_at_answer']} answers, recovered in {result['recovered_s']} s, "
          f"down to 1 in {result['scaled_down_s']} s after the load")
