"""TorchServe workers × threads: the CPU archive's default (two workers sharing the cores) against one worker
holding them all, alternated, with the model-only rate of the same file before and after.

    python -m benchmarks.workers [--run RUN] [--rounds 2] [--out FILE]

Without --run it measures the benchmark's preset model (`benchmarks.common.make_run`, seeded weights). Each
set-up gets a fresh private TorchServe on loopback; both of its workers are READY before the load starts.
Concurrency 1 (6 requests) and 4 (20 requests) with 512² JPEGs, as `benchmarks.serving` sends them. During
the concurrency-4 load it also records where the CPU went (seconds per process of the server: the Java
frontend, each worker) and the handler's last DecodeMs / ModelMs / EncodeMs (its metrics endpoint). The
figures of docs/serving.md (Workers and threads) come from this command.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import make_run, run_worker
from benchmarks.serving import load, request_body

SETUPS = {"2 workers (default)": None, "1 worker": 1}  # archive_run(workers=...)


def model_only(run: Path) -> float:
    """Images/s of the served .pt2 at batch 1 in one process with every thread, at what `auto` runs here."""
    from benchmarks.report import served_variant
    from pipeline.serve.precision import resolve_precision

    variant = served_variant({"serving": {"precision": resolve_precision("auto", "cpu")}})  # as the workers run it
    result = run_worker("benchmarks.infer", ["--variant", variant, "--size", "512", "--run", str(run),
                                             "--batches", "1", "--repeats", "6"])
    return result["batches"]["1"]["images_per_s"]


def cpu_seconds(pgid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every live process in process group `pgid`: pid → (role, seconds)."""
    out, tick = {}, os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != pgid:
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        role = "worker" if "model_service_worker" in cmd else "java" if "java" in cmd.split(" ")[0] else "launcher"
        out[int(proc.name)] = (role, (int(fields[11]) + int(fields[12])) / tick)
    return out


def handler_ms(text: str) -> dict[str, float]:
    """The handler's last DecodeMs / ModelMs / EncodeMs from the Prometheus text of the metrics port."""
    found = {}
    for name in ("DecodeMs", "ModelMs", "EncodeMs"):
        match = re.search(rf"^{name}{{[^}}]*}} ([0-9.eE+-]+)$", text, re.M)
        if match:
            found[name] = float(match.group(1))
    return found


def serve(run: Path, work: Path, workers: int | None, body: bytes) -> list[dict[str, Any]]:
    """Concurrency 1 and 4 against a fresh server of one archive of `run`."""
    from pipeline.export.archive import CPU_WORKERS, archive_run
    from pipeline.ops.torchserve_local import LocalTorchServe

    archive_run(run, work / "store", name="m", workers=workers)
    expected = workers or CPU_WORKERS
    with LocalTorchServe(work / "ts", work / "store") as server:
        server.wait_ready(["m"], timeout=240)
        deadline = time.monotonic() + 240
        while sum(w["status"] == "READY" for w in server.workers("m")) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every worker came up:\n{server.logs()}")
            time.sleep(0.5)
        for _ in range(4):  # warm-up: each worker's first calls
            server.request("POST", "/predictions/m", body, {"Content-Type": "image/jpeg"})
        rows = [load(server, "m", body, 1, 6)]
        assert server.proc is not None
        group = os.getpgid(server.proc.pid)
        before, wall = cpu_seconds(group), time.perf_counter()
        rows.append(load(server, "m", body, 4, 20))
        wall, after = time.perf_counter() - wall, cpu_seconds(group)
        used: dict[str, float] = {}
        for pid, (role, seconds) in after.items():
            key = f"{role} {pid}" if role == "worker" else role
            used[key] = round(seconds - before.get(pid, (role, 0.0))[1], 2)
        metrics = server.request("GET", "/metrics", port=server.metrics)[2].decode()
        rows[-1].update(cpu_s=used, cpu_available_s=round(wall * (os.cpu_count() or 1), 2),
                        handler_ms=handler_ms(metrics))
        return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workers")
    p.add_argument("--run", type=Path, default=None, help="an exported run (default: the benchmark's preset model)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="instyle-workers-") as tmp:
        run = args.run or make_run(Path(tmp) / "runs" / "preset")
        body = request_body()
        out: dict[str, Any] = {"model_only_images_per_s": [model_only(run)], "rows": []}
        for rnd in range(args.rounds):
            for name, workers in SETUPS.items():
                for row in serve(run, Path(tmp) / f"{rnd}-{workers}", workers, body):
                    out["rows"].append({**row, "setup": name, "round": rnd})
                    print(f"{name:20s} concurrency {row['concurrency']}: {row['requests_per_s']:.2f} requests/s, "
                          f"p50 {row['p50_s'] * 1e3:.0f} ms, p99 {row['p99_s'] * 1e3:.0f} ms, errors {row['errors']}"
                          + (f"; CPU s {row['cpu_s']} of {row['cpu_available_s']}, handler {row['handler_ms']}"
                             if "cpu_s" in row else ""), flush=True)
        out["model_only_images_per_s"].append(model_only(run))
    print("model-only images/s (before, after):", ", ".join(f"{v:.2f}" for v in out["model_only_images_per_s"]))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
