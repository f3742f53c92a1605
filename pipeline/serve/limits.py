"""The serving limits and where each is read from: defined once, for the handler, the offline
`stylize` command and the archiver.

Precedence, highest first: an explicit argument (CLI option), the environment of the server
($INSTYLE_*), the `handler:` section of the archive's model-config.yaml, the default here.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from pipeline.common.image_codec import DEFAULT_MAX_PIXELS  # noqa: F401 (one of the limits; defined where decode checks it)

DEFAULT_MAX_SIDE = 4096  # longest side the model ever sees (4K); larger inputs are downscaled
DEFAULT_MAX_MEMORY_MB = 2048  # activations of one model call on the CPU; above it an image is stylized in tiles
DEVICE_MEMORY_SHARE = 0.8  # of a GPU worker's share of free memory: the rest for cuDNN workspaces and the allocator
ENV_MAX_SIDE = "INSTYLE_MAX_SIDE"
ENV_MAX_PIXELS = "INSTYLE_MAX_PIXELS"
ENV_MAX_MEMORY = "INSTYLE_MAX_MEMORY_MB"
ENV_THREADS = "INSTYLE_THREADS"


def positive_int_setting(key: str, env_name: str, default: int, *, value: Any = None,
                         env: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None) -> int:
    """`value`, else $`env_name`, else `config[key]`, else `default`, as an integer ≥ 1; a clear
    ValueError naming where a bad value came from."""
    env = os.environ if env is None else env
    source, raw = key, value
    if raw is None and env.get(env_name):
        source, raw = env_name, env[env_name]
    if raw is None and config and config.get(key) not in (None, ""):
        raw = config[key]
    if raw is None:
        return default
    try:
        number = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{source}={raw!r} is not an integer") from None
    if number < 1:
        raise ValueError(f"{source} must be ≥ 1, got {number}")
    return number


def server_limits(config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(max_side, max_pixels) of a server: environment over `config` over the defaults."""
    return (positive_int_setting("max_side", ENV_MAX_SIDE, DEFAULT_MAX_SIDE, env=env, config=config),
            positive_int_setting("max_pixels", ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS, env=env, config=config))


def memory_cap_bytes(max_memory_mb: int | None = None, env: Mapping[str, str] | None = None,
                     config: Mapping[str, Any] | None = None) -> int:
    """The activation memory allowed for one model call, in bytes (MB from the argument, the
    environment, `config["max_memory_mb"]` or the default)."""
    return positive_int_setting("max_memory_mb", ENV_MAX_MEMORY, DEFAULT_MAX_MEMORY_MB, value=max_memory_mb,
                                env=env, config=config) * 2**20


def device_memory_cap_mb(free_bytes: int, workers: int, share: float = DEVICE_MEMORY_SHARE) -> int:
    """A GPU worker's activation cap in MB: its part of the device's free memory (`free_bytes`, from
    torch.cuda.mem_get_info after the model is loaded) when `workers` workers share the device, less
    headroom. The bytes-per-pixel estimate it is compared with was measured on the CPU (pipeline.serve.tiling)."""
    if workers < 1:
        raise ValueError(f"workers sharing a device must be ≥ 1, got {workers}")
    return max(1, int(free_bytes * share / workers) // 2**20)


def workers_per_device(config: Mapping[str, Any], device_count: int) -> int:
    """How many of this model's workers share one GPU: TorchServe hands out `deviceIds` (else every
    visible GPU) round-robin to maxWorkers (else minWorkers, else one) workers."""
    workers = model_workers(config)
    devices = len(config.get("deviceIds") or []) or max(1, device_count)
    return max(1, -(-workers // devices))


def model_workers(config: Mapping[str, Any]) -> int:
    """How many workers TorchServe runs for a model, from its model-config.yaml (maxWorkers, else
    minWorkers, else the server's default of one)."""
    return int(config.get("maxWorkers") or config.get("minWorkers") or 1)


def cpu_threads(config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                cpus: int | None = None) -> int:
    """Torch threads of one CPU worker: $INSTYLE_THREADS, else the `handler:` section's `threads`, else the
    CPUs this process may run on shared out among the model's workers (at least one each), so that
    workers × threads = cores: two workers of one thread on two cores overlap one request's decode, PNG
    encode and IPC with the other's model call instead of oversubscribing the cores (docs/serving.md,
    Workers and threads)."""
    config = config or {}
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    shared = max(1, cpus // model_workers(config))
    return positive_int_setting("threads", ENV_THREADS, shared, env=env, config=config.get("handler") or {})
