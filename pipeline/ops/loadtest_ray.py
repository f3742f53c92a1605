"""`make loadtest ENGINE=ray`: the load test against a private Ray cluster on this machine (a head and
`nodes` worker nodes, pipeline.ops.ray_cluster; 0: the head alone) serving one exported run with ray_serve.yaml's
autoscaling: replicas are counted through the load and after it (up under load, back down after),
and with `kill_node_after` the worker node holding the most replicas is killed once that many requests
were answered: the load test then says whether every request was still answered (the Gateway retries a
request whose replica died) and how long the deployment took to run its minimum again.

The head has no CPUs for replicas (they run on the worker nodes, so a killed node takes replicas with it);
the HTTP proxy and the Gateway are on the head. Figures of nodes that share the machine's cores are
not throughput claims: they show the behaviour, not a capacity.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from pipeline.ops.loadtest import run_load
from pipeline.ops.ray_cluster import LocalCluster
from pipeline.ops.ray_serve_local import TEMPLATE, serve_config, wait_serving
from pipeline.ops.torchserve_local import free_ports

SAMPLE_S = 0.5  # how often the replica count is read during the run
# the replicas and handles report their load every second (Ray's default: 10 s), for the short look-back below
FAST_METRICS = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
                "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}


class ReplicaLog:
    """Where the Stylizer replicas RUN over time ({node id: replicas}), read from the dashboard every SAMPLE_S
    in a thread."""

    def __init__(self, cluster: LocalCluster):
        self.cluster, self.start = cluster, time.monotonic()
        self.samples: list[tuple[float, dict[str, int], int]] = []  # (s, node id → running, target replicas)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                self.samples.append((round(time.monotonic() - self.start, 1), *replica_state(self.cluster)))
            except OSError:  # the dashboard is busy (shared cores): this sample is skipped
                pass

    def now(self) -> int:
        try:
            return sum(replica_state(self.cluster)[0].values())
        except OSError:
            return -1

    def at_minimum(self, replicas: int) -> bool:
        try:
            nodes, target = replica_state(self.cluster)
        except OSError:
            return False
        return target == replicas == sum(nodes.values())

    def wait_running(self, replicas: int, timeout: float) -> None:
        """Until `replicas` run (the deployment's minimum, before the load starts)."""
        deadline = time.monotonic() + timeout
        while self.now() < replicas:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {replicas} Stylizer replicas running after {timeout:.0f} s")
            time.sleep(SAMPLE_S)

    def timeline(self) -> list[tuple[float, int, int]]:
        """(seconds, replicas running, replicas the autoscaler wants)."""
        return [(t, sum(nodes.values()), target) for t, nodes, target in self.samples]

    def recovered_s(self, killed: str, at: float, target: int) -> float | None:
        """Seconds from the kill until `target` replicas run, none on the killed node."""
        after = at - self.start
        return next((round(t - after, 1) for t, nodes, _ in self.samples
                     if t >= after and killed not in nodes and sum(nodes.values()) >= target), None)

    def __enter__(self) -> "ReplicaLog":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        try:  # the state it ends in
            self.samples.append((round(time.monotonic() - self.start, 1), *replica_state(self.cluster)))
        except OSError:
            pass


def replica_state(cluster: LocalCluster) -> tuple[dict[str, int], int]:
    """(node id → RUNNING Stylizer replicas it holds, the replicas the autoscaler wants)."""
    counts: dict[str, int] = {}
    target = 0
    for app in cluster.applications().values():
        deployment = (app.get("deployments") or {}).get("Stylizer", {})
        target += deployment.get("target_num_replicas") or 0
        for replica in deployment.get("replicas") or []:
            if replica.get("state") == "RUNNING":
                counts[replica["node_id"]] = counts.get(replica["node_id"], 0) + 1
    return counts, target


def run(model: str, model_path: Path, *, clients: int, requests: int, max_seconds: float, nodes: int = 2,
        node_cpus: int = 2, kill_node_after: int | None = None, min_replicas: int = 1, max_replicas: int | None = None,
        downscale_s: float = 10, settle_timeout: float = 120, config: Path = TEMPLATE, work: Path = Path("logs")) -> dict:
    """Start the cluster, deploy, run the load (killing a node if asked), wait for the scale-down; the load
    test's result with `engine`, `replicas_timeline` [(s, replicas)], `max_replicas_seen`,
    `scaled_down_s`, `killed_node`, `recovered_s` (a kill to the minimum running again) and `answers_after`."""
    if nodes < 0 or node_cpus < 1 or min_replicas < 1:
        raise ValueError("--nodes must be ≥ 0, --node_cpus and --min_replicas ≥ 1")
    if nodes == 0 and kill_node_after is not None:
        raise ValueError("--kill_node_after needs worker nodes (--nodes ≥ 1): with --nodes 0 everything runs on the head")
    max_replicas = max_replicas or max(nodes, 1) * node_cpus
    if min_replicas > max_replicas:
        raise ValueError(f"--min_replicas {min_replicas} is more than the {max_replicas} replicas the nodes hold")
    keys = {"inference": "loadtest-inference", "management": "loadtest-management"}
    (port,) = free_ports(1)
    derived = serve_config({model: str(model_path.resolve())}, keys, config, "127.0.0.1", port, overrides={"Stylizer": {
        # timings shortened so that a run of a minute shows the scaling both ways (ray_serve.yaml's are for production)
        "autoscaling_config": {"min_replicas": min_replicas, "max_replicas": max_replicas,
                               "look_back_period_s": 3, "upscale_delay_s": 1, "downscale_delay_s": downscale_s},
        "ray_actor_options": {"num_cpus": 1}}})
    work.mkdir(parents=True, exist_ok=True)
    derived_path = work / f"ray-loadtest-{port}.yaml"
    derived_path.write_text(yaml.safe_dump(derived, sort_keys=False))
    start = time.monotonic()
    # nodes=0: one node, the head, runs everything (as `make serve ENGINE=ray`)
    cluster = LocalCluster(head_cpus=0 if nodes else node_cpus, worker_cpus=(node_cpus,) * nodes, env=FAST_METRICS)
    try:
        cluster.deploy(derived_path)
        ready_s = wait_serving(port, keys, [model], timeout=300)
        layout = f"a head and {nodes} worker nodes of {node_cpus} CPUs" if nodes else f"one node of {node_cpus} CPUs"
        print(f"Ray Serve ready in {time.monotonic() - start:.0f} s (serving {ready_s:.0f} s after deploy) on 127.0.0.1:{port}: "
              f"{layout}; {clients} clients × {requests} requests...", flush=True)
        kill = Killer(cluster, kill_node_after)
        with ReplicaLog(cluster) as log:
            log.wait_running(min_replicas, timeout=300)
            result = run_load(SimpleNamespace(inference=port, keys=keys), model, clients, requests, max_seconds,
                              progress=kill.progress)
            kill.join()
            settle = time.monotonic()  # back down: the autoscaler wants the minimum again, and only that runs
            while not (down := log.at_minimum(min_replicas)) and time.monotonic() - settle < settle_timeout:
                time.sleep(SAMPLE_S)
            scaled_down, scaled_down_s = down, round(time.monotonic() - settle, 1)
        after = run_load(SimpleNamespace(inference=port, keys=keys), model, 1, 2, 120)  # still serving after it all
        timeline = log.timeline()
        recovered = None
        if kill.node_id is not None:  # the replicas it held back, on the nodes left (as many as fit)
            recovered = log.recovered_s(kill.node_id, kill.at, min(kill.before, (nodes - 1) * node_cpus))
        result.update(engine="ray", nodes=nodes, node_cpus=node_cpus, min_replicas=min_replicas, max_replicas=max_replicas,
                      replicas_timeline=timeline, max_replicas_seen=max((n for _, n, _ in timeline), default=0),
                      max_target=max((t for _, _, t in timeline), default=0),
                      scaled_down=scaled_down, scaled_down_s=scaled_down_s if scaled_down else None,
                      killed_node=kill.node_id, killed_at_answer=kill.answered if kill.node_id else None,
                      replicas_at_kill=kill.before if kill.node_id else None, recovered_s=recovered,
                      answers_after=after["good"], ready_s=round(ready_s, 1))
        return result
    finally:
        cluster.shutdown()
        derived_path.unlink(missing_ok=True)


class Killer:
    """Kills the worker node holding the most replicas once `after` requests were answered and replicas run
    on two nodes or more (the deployment has scaled out; however long that takes while the load lasts), in its
    own thread: `progress` is called under the load test's lock."""

    def __init__(self, cluster: LocalCluster, after: int | None):
        self.cluster, self.after = cluster, after
        self.node_id: str | None = None
        self.at = 0.0
        self.before = 0  # replicas running when it struck
        self.answered = 0  # requests answered by then
        self._count = 0
        self._due = threading.Event()
        self._load_done = threading.Event()
        self._thread = threading.Thread(target=self._kill, daemon=True)
        if after is not None:
            self._thread.start()

    def progress(self, answered: int) -> None:
        self._count = answered
        if self.after is not None and answered >= self.after:
            self._due.set()

    def _kill(self) -> None:
        self._due.wait()
        holding = replica_state(self.cluster)[0]
        while len(holding) < 2 and not self._load_done.is_set():
            time.sleep(SAMPLE_S)
            holding = replica_state(self.cluster)[0]
        workers = {n.node_id: n for n in self.cluster.workers}
        target = max(workers, key=lambda n: holding.get(n, 0))
        self.before, self.answered = sum(holding.values()), self._count
        self.at = time.monotonic()
        self.cluster.kill_worker(workers[target])
        self.node_id = target
        print(f"killed worker node {target[:8]} holding {holding.get(target, 0)} of {self.before} replicas "
              f"after {self.answered} answers", flush=True)

    def join(self) -> None:
        if self.after is not None:
            self._load_done.set()  # a load that ended first: the node is killed after it
            self._due.set()
            self._thread.join()
