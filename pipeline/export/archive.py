"""Package exported runs as TorchServe archives: `python -m pipeline archive [--name NAME]` (`make archive`).

runs/NAME/export/{generator.pt|generator.pt2, metadata.json} → model_store/NAME.mar with
- the handler `handlers/stylize_handler.py`;
- the project modules the handler imports, and what they import in turn (`serving_modules`: the
  serving core `pipeline/serve/`, the generator's definition in `pipeline/model/`, the image codec in
  `pipeline/common/`; never the offline tools, the ONNX runner or training), found by their
  module-level imports, so the worker's Python needs torch, Pillow and numpy but not this project, and runs exactly
  the code that was archived;
- `metadata.json`, and `model-config.yaml` (workers, batching, timeout, GPU placement, the handler's
  limits and precision), written with the yaml library.
Without --name every run with an export is archived. An existing .mar is replaced atomically.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_archiver_error import ModelArchiverError
from model_archiver.model_packaging import package_model
from model_archiver.model_packaging_utils import ModelExportUtils

import pipeline
from pipeline.common.files import atomic_write
from pipeline.serve.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from pipeline.serve.precision import DEFAULT_PRECISION, check_precision

HANDLER_MODULE = "handlers.stylize_handler"
Serialized = Literal["pt", "pt2"]
BATCH_SIZE = 1  # TorchServe batchSize: on 2 cores batching was slower (docs/benchmarks.md)
MAX_BATCH_DELAY_MS = 50
# CPU archives run two workers sharing the cores (pipeline.serve.limits.cpu_threads): one request's decode,
# PNG encode and IPC overlap the other's model call (docs/serving.md, Workers and threads)
CPU_WORKERS = 2
RESPONSE_TIMEOUT_S = 300
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # what TorchServe accepts as a model name


def model_config(batch_size: int, max_batch_delay_ms: int, response_timeout_s: int, max_side: int,
                 max_pixels: int, max_memory_mb: int | None = None, *, workers: int | None = None, gpu: bool = False,
                 device_ids: Sequence[int] | None = None, precision: str = DEFAULT_PRECISION,
                 threads: int | None = None) -> str:
    """model-config.yaml: TorchServe's keys (workers, batching, timeout, deviceType / deviceIds) plus the
    handler's own section (read by the handler). Without `max_memory_mb` the handler derives the cap:
    2048 MB on the CPU, its share of the GPU's free memory on a GPU. Without `workers` an unbatched CPU
    archive runs CPU_WORKERS workers, others TorchServe's default; without `threads` each CPU worker takes
    its share of the cores."""
    for key, value in (("batch_size", batch_size), ("max_batch_delay_ms", max_batch_delay_ms),
                       ("response_timeout_s", response_timeout_s), ("max_side", max_side), ("max_pixels", max_pixels),
                       ("max_memory_mb", max_memory_mb), ("workers", workers), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be an integer ≥ 1, got {value!r}")
    check_precision(precision)
    if device_ids and not gpu:
        raise ValueError("device_ids needs gpu=true")
    if device_ids and any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in device_ids):
        raise ValueError(f"device_ids must be GPU indices ≥ 0, got {list(device_ids)}")
    config: dict[str, Any] = {}
    # two CPU workers unless batching, which fills one worker's batches from the queue (two would halve them)
    workers = CPU_WORKERS if workers is None and not gpu and batch_size == 1 else workers
    if workers is not None:
        config.update(minWorkers=workers, maxWorkers=workers)
    config.update(batchSize=batch_size, maxBatchDelay=max_batch_delay_ms, responseTimeout=response_timeout_s,
                  deviceType="gpu" if gpu else "cpu")
    if device_ids:
        config["deviceIds"] = [int(i) for i in device_ids]
    handler = {"max_side": max_side, "max_pixels": max_pixels, "precision": precision}
    if max_memory_mb is not None:
        handler["max_memory_mb"] = max_memory_mb
    if threads is not None:
        handler["threads"] = threads
    config["handler"] = handler
    return yaml.safe_dump(config, sort_keys=False)


def handler_path() -> Path:
    """The handler's source file, found by its module name (not a path relative to this file)."""
    spec = importlib.util.find_spec(HANDLER_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"cannot find the handler module {HANDLER_MODULE}: is the project installed?")
    return Path(spec.origin)


def imported_modules(path: Path) -> set[str]:
    """The `pipeline.*` names a source file imports at module level (with `from m import n`, both `m`
    and `m.n`: n may be a module). An import inside a function is the project's mark of an optional
    path the worker does not take: the loader imports the ONNX runner only for an `.onnx`, which
    TorchServe does not serve (tests/test_serving_archive.py runs the `.mar` without the project)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if id(node) in nested:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "pipeline"}


def module_file(name: str) -> Path | None:
    """The source file of project module `name` (a package's `__init__.py`), None when it names no module."""
    base = Path(pipeline.__file__).parent.joinpath(*name.split(".")[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def serving_modules(entry: Path | None = None) -> dict[str, Path]:
    """Every project module the handler (or `entry`) needs, import name → source file: its imports,
    theirs in turn, and the packages' `__init__.py` on the way. What the `.mar` bundles, nothing more."""
    modules: dict[str, Path] = {}
    todo = sorted(imported_modules(entry or handler_path()))
    while todo:
        name = todo.pop()
        source = None if name in modules else module_file(name)
        if source is None:
            continue  # seen, or a function / constant imported from a module
        modules[name] = source
        parent = name.rpartition(".")[0]
        todo += sorted(imported_modules(source)) + [parent] * bool(parent)
    return dict(sorted(modules.items()))


def stage_extra_files(dest: Path, metadata: dict[str, Any]) -> None:
    """The archive's extra files: `serving_modules()` under their import paths, and metadata.json.

    `pipeline/__init__.py` is the project's own (it imports nothing), so `pipeline.serve.*` imports
    the bundled copy; no module the handler does not import is bundled, so training code, the offline
    tools and the ONNX runner cannot leak into the worker."""
    for name, source in serving_modules().items():
        target = dest.joinpath(*name.split("."))
        target = target / "__init__.py" if source.name == "__init__.py" else target.with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (dest / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def archive_run(run_dir: str | Path, store: str | Path = "model_store", name: str | None = None,
                serialized: Serialized = "pt2", batch_size: int = BATCH_SIZE, max_batch_delay_ms: int = MAX_BATCH_DELAY_MS,
                response_timeout_s: int = RESPONSE_TIMEOUT_S, max_side: int = DEFAULT_MAX_SIDE,
                max_pixels: int = DEFAULT_MAX_PIXELS, max_memory_mb: int | None = None, workers: int | None = None,
                gpu: bool = False, device_ids: Sequence[int] | None = None, precision: str = DEFAULT_PRECISION,
                threads: int | None = None) -> Path:
    """Archive `run_dir/export/` as `store/<name>.mar` (name defaults to the run folder's name)."""
    run_dir = Path(run_dir)
    name = name or run_dir.resolve().name
    if not NAME_RE.match(name):
        raise ValueError(f"model name {name!r} is not allowed by TorchServe (letters, digits, _ - . only)")
    config_text = model_config(batch_size, max_batch_delay_ms, response_timeout_s, max_side, max_pixels, max_memory_mb,
                               workers=workers, gpu=gpu, device_ids=device_ids, precision=precision,
                               threads=threads)  # checks them
    if serialized not in ("pt", "pt2"):
        raise ValueError(f"serialized must be pt or pt2, got {serialized!r}")
    export = run_dir / "export"
    model_file, meta_file = export / f"generator.{serialized}", export / "metadata.json"
    for needed in (model_file, meta_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: run `python -m pipeline export --run {run_dir}` first")
    metadata = json.loads(meta_file.read_text())
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    final = store / f"{name}.mar"
    # atomic: a running server never sees half a file (the archiver writes NAME.mar into out_dir)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=store) as tmp, atomic_write(final) as mar:
        tmp_path, out_dir = Path(tmp), mar.parent
        extra = tmp_path / "extra"
        stage_extra_files(extra, metadata)
        config_file = tmp_path / "model-config.yaml"
        config_file.write_text(config_text)
        config = ModelArchiverConfig(
            model_name=name, handler=str(handler_path()), version=str(metadata.get("project_version") or "1.0"),
            serialized_file=str(model_file), extra_files=str(extra), export_path=str(out_dir), force=True,
            config_file=str(config_file))
        package_model(config, manifest=ModelExportUtils.generate_manifest_json(config))
    return final


def exported_runs(runs: Path, serialized: str = "pt2") -> list[Path]:
    """Run folders that have an export ready to archive."""
    return sorted(p.parent.parent for p in runs.glob(f"*/export/generator.{serialized}") if (p.parent / "metadata.json").is_file())


def command(*, name: str | None = None, runs: Path = Path("runs"), store: Path = Path("model_store"),
            serialized: Serialized = "pt2", batch_size: int = BATCH_SIZE, max_batch_delay_ms: int = MAX_BATCH_DELAY_MS,
            response_timeout_s: int = RESPONSE_TIMEOUT_S, max_side: int = DEFAULT_MAX_SIDE,
            max_pixels: int = DEFAULT_MAX_PIXELS, max_memory_mb: int | None = None, workers: int | None = None,
            gpu: bool = False, device_ids: list[int] | None = None,
            precision: Literal["auto", "fp32", "bf16", "fp16"] = DEFAULT_PRECISION, threads: int | None = None) -> int:
    """Archive exported runs as TorchServe .mar files in STORE (an existing one is replaced atomically).

    Args:
        name: run name (RUNS/NAME); default: every run with an export.
        runs: runs folder.
        store: output folder of the .mar files.
        serialized: model file to serve: pt2 (torch.export, the fastest and leanest in docs/benchmarks.md) or pt (TorchScript).
        batch_size: TorchServe batchSize.
        max_batch_delay_ms: TorchServe maxBatchDelay.
        response_timeout_s: seconds per batch before TorchServe restarts the worker (a 4K image on a small CPU takes a while).
        max_side: server cap on the longer side; larger images are downscaled.
        max_pixels: refuse images with more pixels, before decoding.
        max_memory_mb: activation memory per model call; larger images are stylized in tiles with whole-image
            instance-norm statistics (default: 2048 on the CPU; on a GPU the worker's share of its free memory).
        workers: TorchServe minWorkers = maxWorkers (default: 2 on the CPU at batch_size 1, sharing the cores;
            else TorchServe's, one).
        gpu: serve on GPUs (deviceType gpu; each worker gets one by TorchServe's gpu_id).
        device_ids: which GPUs, e.g. --device_ids '[0,1]' (default: every visible one); needs --gpu true.
        precision: of the convolutions, auto (bf16 on a worker CPU with native bf16, else fp32) | fp32 | bf16 | fp16
            (docs/serving.md for the pixel differences).
        threads: torch threads per CPU worker (default: the cores shared out among the workers; $INSTYLE_THREADS
            on the server overrides both).
    """
    run_dirs = [runs / name] if name else exported_runs(runs, serialized)
    if not run_dirs:
        print(f"nothing to archive: no {runs}/*/export/generator.{serialized}; run `make export NAME=<run>` first",
              file=sys.stderr)
        return 1
    failed = 0
    for run_dir in run_dirs:
        try:
            mar = archive_run(run_dir, store, serialized=serialized, batch_size=batch_size,
                              max_batch_delay_ms=max_batch_delay_ms, response_timeout_s=response_timeout_s,
                              max_side=max_side, max_pixels=max_pixels, max_memory_mb=max_memory_mb, workers=workers,
                              gpu=gpu, device_ids=device_ids, precision=precision, threads=threads)
        except (FileNotFoundError, ValueError, OSError, ModelArchiverError) as e:
            print(f"archive failed for {run_dir}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{run_dir} → {mar}")
    return 1 if failed else 0
