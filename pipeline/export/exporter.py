"""Export a trained generator for serving: `python -m pipeline export --run runs/NAME [--ckpt FILE]` (`make export`).

Writes into `runs/NAME/export/`:
- `generator.pt`  TorchScript (scripted, frozen), loadable by any TorchServe / libtorch;
- `generator.pt2` `torch.export` program with dynamic batch, H and W: what `make archive` packs and the
  TorchServe handler serves by default (the fastest and leanest in docs/benchmarks.md);
- `generator.onnx` ONNX (opset 18, dynamic batch, H and W, live InstanceNormalization) for ONNX
  Runtime and other runtimes (`onnx_export.py`; the optional `onnx` extra);
- `metadata.json` style, hyper-parameters, versions, git sha, export time, checkpoint step.
Every model file also embeds the same metadata (`metadata.json` extra file / ONNX metadata_props).

A multi-style or strength model's graphs take (image, style weights (B, N)[, strength (B,)]); see
`pipeline.serve.controls.call_model`. `.pt` and `.pt2` capture the generator's inference form
(`for_inference()`: channels-last, regrouped decoder), `.onnx` the form as trained (runtimes choose
their own layouts). Every file is checked against the generator as trained and validated, on
odd-sized images (and random style mixes and strengths), before it is kept.
"""
from __future__ import annotations

import copy
import datetime as dt
import importlib.metadata
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from pipeline.common.files import atomic_write
from pipeline.model.checkpoint import checkpoint_metadata, generator_from_checkpoint, read_checkpoint
from pipeline.export.graph_devices import strip_devices
from pipeline.export.onnx_export import export_onnx, require_onnx
from pipeline.serve.model_io import METADATA_NAME, WEIGHTS_NAME, load_model, quiet_jit

Format = Literal["pt", "pt2", "onnx"]
FORMATS: tuple[Format, ...] = ("pt", "pt2", "onnx")
EXAMPLE_SHAPE = (2, 3, 64, 96)  # batch 2 so torch.export does not specialize the batch size to 1
CHECK_SHAPES = ((1, 3, 37, 53), (2, 3, 21, 64))  # odd, non-square, a batch: exercise the pad/crop path
CHECK_TOL = 1e-4


def project_version() -> str | None:
    """pipeline.__version__ if defined, else the installed distribution's version."""
    import pipeline

    version = getattr(pipeline, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("instyle")
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, Any]:
    """Commit and dirtiness of the code doing the export; empty values when git is unavailable."""
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return {"git_sha": sha, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def export_facts(run_dir: Path) -> dict[str, Any]:
    """What every export records besides the model's own description: run, versions, git, time, input."""
    return {
        "run": run_dir.resolve().name,
        "project_version": project_version(),
        **git_state(),
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "input": {"layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [0.0, 1.0]},
    }


def build_metadata(ckpt: dict[str, Any], ckpt_path: Path, run_dir: Path) -> dict[str, Any]:
    """Everything needed to tell later which model a served file is."""
    return {**checkpoint_metadata(ckpt, ckpt_path), **export_facts(run_dir)}


def export_torchscript(generator: nn.Module, path: Path, metadata_json: str) -> None:
    """Script (not trace: tracing would bake in the example's pad/crop sizes) and freeze.

    The state dict goes along as an extra file: freezing turns the weights into graph constants,
    and tiled inference of very large images (pipeline.serve.inference.stylize_tiled) needs them."""
    weights = io.BytesIO()
    torch.save(generator.state_dict(), weights)
    with quiet_jit():
        scripted = torch.jit.freeze(torch.jit.script(serving_form(generator)))
        torch.jit.save(scripted, str(path), _extra_files={METADATA_NAME: metadata_json, WEIGHTS_NAME: weights.getvalue()})


def serving_form(generator: nn.Module) -> nn.Module:
    """A copy of `generator` in its inference form (the module given is left as trained)."""
    return copy.deepcopy(generator).for_inference()


def example_inputs(generator: nn.Module, shape: Sequence[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the exported graph: the image, then for a conditioned generator the style weights
    (B, N) and, with the strength control, the strengths (B,); random (mixes and strengths ≠ 1)."""
    rng = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=rng)
    if not getattr(generator, "conditioned", False):
        return (x,)
    weights = torch.rand(shape[0], generator.n_styles, generator=rng) + 0.05
    inputs = (x, weights / weights.sum(dim=1, keepdim=True))
    return inputs + (torch.rand(shape[0], generator=rng),) if generator.has_strength else inputs


def input_dims(generator: nn.Module) -> tuple[dict[int, Any], ...]:
    """Dynamic shapes for `example_inputs`: batch, H and W of the image; the batch of the others."""
    batch = torch.export.Dim("batch", min=1)
    dims: tuple[dict[int, Any], ...] = ({0: batch, 2: torch.export.Dim("height", min=1), 3: torch.export.Dim("width", min=1)},)
    if getattr(generator, "conditioned", False):
        dims += ({0: batch},) + (({0: batch},) if generator.has_strength else ())
    return dims


def export_program(generator: nn.Module, path: Path, metadata_json: str) -> None:
    """torch.export with dynamic batch, H and W (any size ≥ 1), without device constants (it runs on
    any device once its weights are moved: `pipeline.export.graph_devices`)."""
    with torch.no_grad():
        program = strip_devices(torch.export.export(serving_form(generator), example_inputs(generator, EXAMPLE_SHAPE),
                                                    dynamic_shapes=input_dims(generator)))
    torch.export.save(program, str(path), extra_files={METADATA_NAME: metadata_json})


def check_matches(path: Path, generator: nn.Module) -> float:
    """Reload an exported file and return its max abs difference from the generator as trained (its
    training form, in eval mode) on odd, non-square sizes (and a batch of two; for conditioned
    generators with random style mixes and strengths, one per sample); raise if too large."""
    model = load_model(path)[0]
    diff = 0.0
    for i, shape in enumerate(CHECK_SHAPES):
        inputs = example_inputs(generator, shape, seed=i)
        with torch.inference_mode():
            diff = max(diff, (model(*inputs) - generator(*inputs)).abs().max().item())
    if not diff <= CHECK_TOL:
        raise RuntimeError(f"{path}: exported model differs from eager by {diff:.3g} (> {CHECK_TOL})")
    return diff


def export_generator(generator: nn.Module, metadata: dict[str, Any], out: Path,
                     formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Write `generator` in each format into `out/` (generator.<fmt> + metadata.json), each file
    verified against eager before it takes its final name, so a failed export never leaves a
    half-written model where the archiver would pick it up."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {list(formats)}")
    if "onnx" in formats:
        require_onnx()  # before any file is written
    generator = generator.eval()
    metadata = {**metadata, "formats": list(formats)}
    metadata_json = json.dumps(metadata, indent=2, sort_keys=True)
    out.mkdir(parents=True, exist_ok=True)
    writers = {"pt": export_torchscript, "pt2": export_program,
               "onnx": lambda g, path, meta: export_onnx(g, path, meta, example_inputs(g, EXAMPLE_SHAPE), input_dims(g))}
    written: dict[str, Path] = {}
    for fmt in formats:
        final = out / f"generator.{fmt}"
        with atomic_write(final) as tmp:  # keeps the suffix: load_model dispatches on it
            writers[fmt](generator, tmp, metadata_json)
            check_matches(tmp, generator)
        written[fmt] = final
    (out / "metadata.json").write_text(metadata_json + "\n")
    written["metadata"] = out / "metadata.json"
    return written


def export_run(run_dir: str | Path, ckpt: str | Path | None = None, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Export a run's checkpoint (default `checkpoints/last.ckpt`) into `run_dir/export/`; returns
    {"pt": ..., "pt2": ..., "onnx": ..., "metadata": ...} for the files written."""
    run_dir = Path(run_dir)
    ckpt_path = Path(ckpt) if ckpt is not None else run_dir / "checkpoints" / "last.ckpt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    checkpoint = read_checkpoint(ckpt_path)
    return export_generator(generator_from_checkpoint(checkpoint), build_metadata(checkpoint, ckpt_path, run_dir),
                            run_dir / "export", formats)


def command(*, run: Path, ckpt: Path | None = None, formats: tuple[Format, ...] = FORMATS) -> int:
    """Export a run's generator (torch.export .pt2, TorchScript .pt, ONNX; each verified) into RUN/export/.

    Args:
        run: run directory, e.g. runs/NAME.
        ckpt: checkpoint to export (default: RUN/checkpoints/last.ckpt).
        formats: what to write, e.g. --formats '[pt2,onnx]' (default: all three).
    """
    return run_and_report("export", lambda: export_run(run, ckpt, formats))


def run_and_report(what: str, export: Callable[[], dict[str, Path]]) -> int:
    """A command's body: run `export`, list the files written (exit 0) or say why not (exit 1)."""
    try:
        written = export()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"{what} failed: {e}", file=sys.stderr)
        return 1
    for kind, path in written.items():
        print(f"{kind:8s} {path}")
    return 0
