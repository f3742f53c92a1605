"""A Ray cluster on this machine that one process owns: a head and any number of worker "nodes"
(ray.cluster_utils.Cluster, the tool Ray's own Serve tests use), every listener on 127.0.0.1 and free
ports, so that several can run side by side (the tests, a `make serve ENGINE=ray`). Its processes are
this process's children (Ray's reaper ends them if it dies); `shutdown` ends exactly those, never any
Ray process by name.

`deploy` hands a Ray Serve config (ray_serve.yaml's format) to the cluster with Ray's own `serve deploy`,
and `applications` reads the Serve state back from the dashboard's REST API.

Run as a module it is the daemon behind `make serve ENGINE=ray` (pipeline/ops/ray_serve_local.py):
    python -m pipeline.ops.ray_cluster --config logs/ray-serve.yaml --state logs/ray-serve.json --cpus 2
it starts a one-node cluster, deploys, writes the state file and runs until SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.ops.torchserve_local import free_ports

SERVE_CLI = Path(sys.executable).parent / "serve"
OBJECT_STORE_MB = 200  # per node: request images pass through it; Ray's test default is 150 MB
# Every process of a one-machine cluster on loopback: Ray otherwise turns 127.0.0.1 into the machine's
# address when its processes connect to each other, and the head listens on loopback only. No usage reports.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class LocalCluster:
    """`head_cpus` logical CPUs on the head (0: replicas go to the workers only), one worker node per
    entry of `worker_cpus`. Logical CPUs are what Ray schedules replicas by; every node shares the real cores.
    `env`: more environment for every process of the cluster (e.g. Ray Serve's RAY_SERVE_* settings)."""

    def __init__(self, head_cpus: int, worker_cpus: tuple[int, ...] = (), object_store_mb: int = OBJECT_STORE_MB,
                 env: dict[str, str] | None = None):
        from ray.cluster_utils import Cluster  # Ray is the `serve` extra's: imported only when a cluster is built

        os.environ.update({**LOOPBACK_ENV, **(env or {})})  # inherited by every process the nodes start
        gcs, self.dashboard_port, agent, client, metrics, runtime, metrics_agent = free_ports(7)
        self.object_store = object_store_mb * 2**20
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=head_cpus, node_ip_address="127.0.0.1", gcs_server_port=gcs, include_dashboard=True,
            dashboard_host="127.0.0.1", dashboard_port=self.dashboard_port, dashboard_agent_listen_port=agent,
            ray_client_server_port=client, metrics_export_port=metrics, metrics_agent_port=metrics_agent, runtime_env_agent_port=runtime,
            object_store_memory=self.object_store))
        self.workers = [self.add_worker(cpus) for cpus in worker_cpus]

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add_worker(self, cpus: int) -> Any:
        """A worker node of `cpus` logical CPUs, joined once it is alive."""
        return self.cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1", object_store_memory=self.object_store)

    def kill_worker(self, node: Any) -> None:
        """The node's processes killed at once (no graceful drain): as a machine that dies."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def deploy(self, config: Path, timeout: float = 300) -> None:
        """`serve deploy CONFIG` against this cluster's dashboard, tried again while the dashboard's Serve
        module is still starting (on busy cores it answers well after the head is up); RuntimeError with
        Ray's message if it is still refused at `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            proc = subprocess.run([str(SERVE_CLI), "deploy", str(config), "--address", self.dashboard],
                                  capture_output=True, text=True, timeout=timeout)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve deploy {config} failed: {(proc.stderr or proc.stdout)[-2000:]}")
            time.sleep(2)

    def applications(self) -> dict[str, Any]:
        """The Serve applications' state (GET /api/serve/applications/): status, message, deployments'
        replica states."""
        return applications(self.dashboard)

    def shutdown(self) -> None:
        """Every node's processes killed at once: a graceful stop waits ~30 s on the Serve replicas."""
        for node in [*self.cluster.worker_nodes, self.cluster.head_node]:
            if node is not None:
                self.cluster.remove_node(node, allow_graceful=False)
        self.cluster.shutdown()  # the head, and Ray's record of the cluster's address


def applications(dashboard: str) -> dict[str, Any]:
    """Serve's applications as the dashboard at `dashboard` (http://host:port) reports them."""
    with urllib.request.urlopen(f"{dashboard}/api/serve/applications/", timeout=10) as resp:
        return json.loads(resp.read()).get("applications") or {}


def daemon(config: Path, state: Path, cpus: int) -> int:
    """A one-node cluster serving `config` until SIGTERM/SIGINT; `state` holds its pid and addresses
    (or the error that stopped it)."""
    stop = threading.Event()
    cluster = None
    try:
        cluster = LocalCluster(head_cpus=cpus)
        for sig in (signal.SIGTERM, signal.SIGINT):  # after Ray's node installs its own (a 30 s drain on SIGTERM)
            signal.signal(sig, lambda *_: stop.set())
        cluster.deploy(config)
        state.write_text(json.dumps({"pid": os.getpid(), "address": cluster.address, "dashboard": cluster.dashboard,
                                     "config": str(config)}))
        while not stop.wait(0.5):  # a timed wait: a signal handler cannot wake an untimed one
            pass
        return 0
    except Exception as e:  # noqa: BLE001 - the launcher reads the reason from the state file
        state.write_text(json.dumps({"pid": os.getpid(), "error": f"{type(e).__name__}: {e}"}))
        return 1
    finally:
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--cpus", type=int, required=True)
    args = parser.parse_args()
    sys.exit(daemon(args.config, args.state, args.cpus))
