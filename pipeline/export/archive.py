"""Package exported runs as TorchServe archives: `python -m pipeline.export.archive [--name NAME]`.

runs/NAME/export/{generator.pt|generator.pt2, metadata.json} → model_store/NAME.mar with
- the handler `handlers/stylize_handler.py`;
- the serving package whole (`pipeline/__init__.py` + `pipeline/serve/`, found by its package path),
  so the worker's Python needs torch, Pillow and numpy but not this project, and runs exactly the
  code that was archived;
- `metadata.json`, and `model-config.yaml` (batching, timeout, the handler's limits).
Without --name every run with an export is archived. An existing .mar is replaced atomically.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_archiver_error import ModelArchiverError
from model_archiver.model_packaging import package_model
from model_archiver.model_packaging_utils import ModelExportUtils

import pipeline
import pipeline.serve
from pipeline.serve.imaging import DEFAULT_MAX_PIXELS
from pipeline.serve.inference import DEFAULT_MAX_SIDE
from pipeline.serve.tiling import DEFAULT_MAX_MEMORY_MB

HANDLER_MODULE = "handlers.stylize_handler"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # what TorchServe accepts as a model name


def model_config(batch_size: int, max_batch_delay_ms: int, response_timeout_s: int, max_side: int,
                 max_pixels: int, max_memory_mb: int = DEFAULT_MAX_MEMORY_MB) -> str:
    """model-config.yaml: TorchServe batching keys plus the handler's own section (read by the handler)."""
    return (f"batchSize: {batch_size}\n"
            f"maxBatchDelay: {max_batch_delay_ms}\n"
            f"responseTimeout: {response_timeout_s}\n"
            "handler:\n"
            f"  max_side: {max_side}\n"
            f"  max_pixels: {max_pixels}\n"
            f"  max_memory_mb: {max_memory_mb}\n")


def handler_path() -> Path:
    """The handler's source file, found by its module name (not a path relative to this file)."""
    spec = importlib.util.find_spec(HANDLER_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"cannot find the handler module {HANDLER_MODULE}: is the project installed?")
    return Path(spec.origin)


def stage_extra_files(dest: Path, metadata: dict[str, Any]) -> None:
    """The archive's extra files: the serving package whole, under its import path, and metadata.json.

    `pipeline/__init__.py` is the project's own (it imports nothing), so `pipeline.serve.*` imports
    the bundled copy; no other stage is bundled, so training code cannot leak into the worker."""
    serve_dir = Path(pipeline.serve.__file__).parent
    (dest / "pipeline").mkdir(parents=True)
    shutil.copy2(pipeline.__file__, dest / "pipeline" / "__init__.py")
    shutil.copytree(serve_dir, dest / "pipeline" / "serve", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def archive_run(run_dir: str | Path, store: str | Path = "model_store", name: str | None = None,
                serialized: str = "pt2", batch_size: int = 1, max_batch_delay_ms: int = 50,
                response_timeout_s: int = 300, max_side: int = DEFAULT_MAX_SIDE,
                max_pixels: int = DEFAULT_MAX_PIXELS, max_memory_mb: int = DEFAULT_MAX_MEMORY_MB) -> Path:
    """Archive `run_dir/export/` as `store/<name>.mar` (name defaults to the run folder's name)."""
    run_dir = Path(run_dir)
    name = name or run_dir.resolve().name
    if not NAME_RE.match(name):
        raise ValueError(f"model name {name!r} is not allowed by TorchServe (letters, digits, _ - . only)")
    if max_memory_mb < 1:
        raise ValueError(f"max_memory_mb must be ≥ 1, got {max_memory_mb}")
    if serialized not in ("pt", "pt2"):
        raise ValueError(f"serialized must be pt or pt2, got {serialized!r}")
    export = run_dir / "export"
    model_file, meta_file = export / f"generator.{serialized}", export / "metadata.json"
    for needed in (model_file, meta_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: run `python -m pipeline.export.exporter --run {run_dir}` first")
    metadata = json.loads(meta_file.read_text())
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=store) as tmp:
        tmp_path = Path(tmp)
        extra = tmp_path / "extra"
        stage_extra_files(extra, metadata)
        config_file = tmp_path / "model-config.yaml"
        config_file.write_text(model_config(batch_size, max_batch_delay_ms, response_timeout_s, max_side, max_pixels,
                                             max_memory_mb))
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        config = ModelArchiverConfig(
            model_name=name, handler=str(handler_path()), version=str(metadata.get("project_version") or "1.0"),
            serialized_file=str(model_file), extra_files=str(extra), export_path=str(out_dir), force=True,
            config_file=str(config_file))
        package_model(config, manifest=ModelExportUtils.generate_manifest_json(config))
        final = store / f"{name}.mar"
        os.replace(out_dir / f"{name}.mar", final)  # atomic: a running server never sees half a file
    return final


def exported_runs(runs: Path, serialized: str = "pt2") -> list[Path]:
    """Run folders that have an export ready to archive."""
    return sorted(p.parent.parent for p in runs.glob(f"*/export/generator.{serialized}") if (p.parent / "metadata.json").is_file())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.export.archive", description=__doc__.split("\n")[0])
    parser.add_argument("--name", help="run name (runs/NAME); default: every run with an export")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs folder (default: runs)")
    parser.add_argument("--store", type=Path, default=Path("model_store"), help="output folder (default: model_store)")
    parser.add_argument("--serialized", choices=("pt", "pt2"), default="pt2",
                        help="model file to serve: pt2 (torch.export, the default: the fastest and leanest in docs/benchmarks.md) or pt (TorchScript)")
    parser.add_argument("--batch-size", type=int, default=1, help="TorchServe batchSize (default 1)")
    parser.add_argument("--max-batch-delay", type=int, default=50, help="TorchServe maxBatchDelay in ms (default 50)")
    parser.add_argument("--response-timeout", type=int, default=300, help="seconds per batch before TorchServe "
                        "restarts the worker (default 300: a 4K image on a small CPU takes a while)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help=f"server cap on the longer side "
                        f"(default {DEFAULT_MAX_SIDE})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels "
                        f"before decoding (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-memory", type=int, default=DEFAULT_MAX_MEMORY_MB, metavar="MB",
                        help="activation memory per model call; larger images are stylized in tiles with "
                             f"whole-image instance-norm statistics (default {DEFAULT_MAX_MEMORY_MB})")
    args = parser.parse_args(argv)
    run_dirs = [args.runs / args.name] if args.name else exported_runs(args.runs, args.serialized)
    if not run_dirs:
        print(f"nothing to archive: no {args.runs}/*/export/generator.{args.serialized}; run pipeline.export.exporter first",
              file=sys.stderr)
        return 1
    failed = 0
    for run_dir in run_dirs:
        try:
            mar = archive_run(run_dir, args.store, serialized=args.serialized, batch_size=args.batch_size,
                              max_batch_delay_ms=args.max_batch_delay, response_timeout_s=args.response_timeout,
                              max_side=args.max_side, max_pixels=args.max_pixels, max_memory_mb=args.max_memory)
        except (FileNotFoundError, ValueError, OSError, ModelArchiverError) as e:
            print(f"archive failed for {run_dir}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{run_dir} → {mar}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
