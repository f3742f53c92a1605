"""`make serve ENGINE=ray` / `make stop ENGINE=ray`: the exported runs served by Ray Serve on this machine
with the TorchServe setup's API, port, token file and answers (handlers/ray_serve.py; docs/scale.md).

    python -m pipeline ray-serve --models '[starry_night]'      # start, wait until every model answers
    python -m pipeline ray-serve --action stop
    python -m pipeline ray-serve --action config --models '[starry_night]'   # logs/ray-serve.yaml for your cluster

The served config is ray_serve.yaml (Ray Serve's own format) with the models and the keys' digests
filled in, written to logs/ray-serve.yaml; the keys go to ./key_file.json in TorchServe's layout, so
the README's curl line works unchanged. The cluster is a daemon of ours (pipeline.ops.ray_cluster),
stopped by its recorded process group, never by process name.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.ops.torchserve_api import request

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "ray_serve.yaml"
STATE = Path("logs/ray-serve.json")


def exported_models(runs: Path, names: list[str] | None = None) -> dict[str, str]:
    """name → absolute path of runs/<name>/export/generator.pt2: the named runs, else every exported one."""
    found = {p.parent.parent.name: p for p in sorted(runs.glob("*/export/generator.pt2"))}
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise FileNotFoundError(f"no {runs}/<run>/export/generator.pt2 for {', '.join(missing)}: "
                                    f"make export NAME={missing[0]}")
        found = {n: found[n] for n in names}
    if not found:
        raise FileNotFoundError(f"no exported run in {runs}/: make export NAME=<run> first")
    return {name: str(path.resolve()) for name, path in found.items()}


def write_keys(path: Path) -> dict[str, str]:
    """Fresh inference and management keys in TorchServe's key_file.json layout (readable by the owner only)."""
    keys = {"inference": secrets.token_urlsafe(24), "management": secrets.token_urlsafe(24)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({kind: {"key": key} for kind, key in keys.items()}, f, indent=1)
    return keys


def serve_config(models: dict[str, str], keys: dict[str, str], template: Path = TEMPLATE, host: str | None = None,
                 port: int | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The template with the models, the keys' SHA-256 digests (never the keys) and the listener filled in;
    `overrides` replace deployment options by deployment name (e.g. {"Stylizer": {"autoscaling_config": ...}})."""
    config = yaml.safe_load(template.read_text())
    config["http_options"] = {**config.get("http_options", {}), **({"host": host} if host else {}),
                              **({"port": port} if port else {})}
    (app,) = config["applications"]
    app["args"] = {**app.get("args", {}), "models": models,
                   "token_sha256": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in keys.items()}}
    for deployment in app.get("deployments", []):
        for key, value in ((overrides or {}).get(deployment["name"]) or {}).items():
            deployment[key] = {**deployment.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def wait_serving(port: int, keys: dict[str, str], models: list[str], timeout: float, alive: Any = None,
                 host: str = "127.0.0.1") -> float:
    """Seconds until /ping answers and every model describes itself (so a replica has loaded it)."""
    start, last = time.monotonic(), "nothing yet"
    while time.monotonic() - start < timeout:
        if alive is not None:
            alive()
        try:
            status, _, body = request((host, port), "GET", "/ping", timeout=10)
            pending = [m for m in models if request((host, port), "GET", f"/models/{m}", token=keys["management"],
                                                    timeout=30)[0] != 200] if status == 200 else models
            if not pending:
                return time.monotonic() - start
            last = f"no replica of {', '.join(pending)} yet" if status == 200 else f"/ping: {status} {body[:200]!r}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.5)
    raise TimeoutError(f"Ray Serve not ready in {timeout:.0f} s ({last}); see logs/ray-serve.log")


def _running_pid(state: Path) -> int | None:
    try:
        pid = int(json.loads(state.read_text())["pid"])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop(state: Path = STATE, timeout: float = 60, proc: subprocess.Popen | None = None) -> bool:
    """End the daemon of `state` (SIGTERM to its process group, SIGKILL after `timeout`); False if none ran.
    `proc`: the daemon when it is this process's child (polled: an exited child stays a zombie until reaped)."""
    pid = proc.pid if proc is not None else _running_pid(state)
    running = (lambda: proc.poll() is None) if proc is not None else (lambda: _running_pid(state) is not None)
    if pid is None or not running():
        state.unlink(missing_ok=True)
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running():
        time.sleep(0.2)
    if running():
        os.killpg(pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    return True


def command(action: str = "start", models: list[str] | None = None, runs: Path = Path("runs"),
            config: Path = TEMPLATE, host: str = "127.0.0.1", port: int | None = None, cpus: int | None = None,
            timeout: float = 300) -> int:
    """Serve exported runs on Ray Serve on this machine (`make serve ENGINE=ray`), or stop it.

    Args:
        action: start, stop, or config: only write logs/ray-serve.yaml and key_file.json (for `serve deploy`
            on a cluster of your own).
        models: run names in RUNS/ to serve (default: every run with export/generator.pt2).
        runs: folder of the runs.
        config: the Ray Serve config to fill in (autoscaling, CPUs per replica, batching, limits).
        host: the HTTP listener's address (loopback unless told otherwise).
        port: the HTTP port (default: the config's, 8080).
        cpus: logical CPUs of the one-node cluster (default: the cores this process may use).
        timeout: seconds to wait for every model to answer.
    """
    if action == "stop":
        print("Ray Serve stopped" if stop() else "no Ray Serve started from this directory was running")
        return 0
    if action not in ("start", "config"):
        print(f"error: --action {action!r}: use start, stop or config", file=sys.stderr)
        return 2
    if action == "start" and _running_pid(STATE) is not None:
        print(f"error: a Ray Serve started here is running ({STATE}); `make stop ENGINE=ray` first", file=sys.stderr)
        return 2
    try:
        served = exported_models(runs, models)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = write_keys(Path("key_file.json"))
    derived = serve_config(served, keys, config, host, port)
    logs = STATE.parent
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "ray-serve.yaml").write_text(yaml.safe_dump(derived, sort_keys=False))
    if action == "config":  # for a cluster of your own: `serve deploy logs/ray-serve.yaml` (docs/scale.md)
        print(f"{logs / 'ray-serve.yaml'}: {', '.join(served)} from {', '.join(sorted(set(map(str, served.values()))))} "
              "(the same paths on every node); keys in key_file.json")
        return 0
    STATE.unlink(missing_ok=True)
    cpus = cpus or len(os.sched_getaffinity(0))
    with open(logs / "ray-serve.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.ops.ray_cluster", "--config", str(logs / "ray-serve.yaml"),
                                 "--state", str(STATE), "--cpus", str(cpus)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def alive() -> None:
        if STATE.exists() and "error" in (error := json.loads(STATE.read_text() or "{}")):
            raise RuntimeError(error["error"])
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray daemon exited with {proc.returncode}; see {logs / 'ray-serve.log'}")

    http = derived["http_options"]
    try:
        seconds = wait_serving(http["port"], keys, list(served), timeout, alive, http["host"])
    except (RuntimeError, TimeoutError) as e:
        stop(proc=proc)
        print(f"error: {e}", file=sys.stderr)
        return 1
    name = next(iter(served))
    print(f"Ray Serve ready in {seconds:.0f} s on {http['host']}:{http['port']} ({', '.join(served)}); keys in key_file.json\n"
          f"KEY=$(python3 -c 'import json; print(json.load(open(\"key_file.json\"))[\"inference\"][\"key\"])')\n"
          f"curl -s -H \"Authorization: Bearer $KEY\" -H \"Content-Type: image/jpeg\" --data-binary @photo.jpg "
          f"http://{http['host']}:{http['port']}/predictions/{name} -o out.png\n`make stop ENGINE=ray` ends it.")
    return 0
