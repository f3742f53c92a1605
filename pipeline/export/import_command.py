"""`python -m pipeline import`: a model trained elsewhere → `runs/NAME/export/`. The files (.pt2, .pt,
.onnx, metadata.json) are our own export's, after which `make archive NAME=…`, `make serve` and `stylize --model …` work as for
our own runs (our fast decoder and tiled path included). Formats: pytorch/examples'
`fast_neural_style` state dicts (pipeline.model.pytorch_examples).

    make import MODEL=candy.pth NAME=candy
    python -m pipeline import --source pytorch-examples --model candy.pth --name candy
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pipeline.export.exporter import FORMATS, Format, export_facts, export_generator, run_and_report
from pipeline.model.pytorch_examples import PYTORCH_EXAMPLES, from_pytorch_examples, read_state_dict

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # a run folder and a TorchServe model name


def import_model(model: Path, name: str, runs: Path = Path("runs"), source: str = PYTORCH_EXAMPLES,
                 formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Rebuild `model` as our generator and export it into RUNS/NAME/export/; returns the files written."""
    if source != PYTORCH_EXAMPLES:
        raise ValueError(f"source={source!r}: supported: {PYTORCH_EXAMPLES}")
    if not NAME_RE.match(name):
        raise ValueError(f"name {name!r}: use letters, digits, _ - . (it names runs/NAME and the TorchServe model)")
    generator, info = from_pytorch_examples(read_state_dict(model), str(model))
    run_dir = Path(runs) / name
    kwargs: dict[str, Any] = {"norm": "instance", "padding": "reflect", "upsample": "nearest", "width": info["width"],
                              "n_residual": info["n_residual"], "output": "clamp"}
    metadata = {"style_image": None, "arch": "residual", "generator_kwargs": kwargs, "vgg_flavour": None,
                "global_step": None, "checkpoint": None, "hyper_parameters": None,
                "imported_from": {**info, "file": str(Path(model).resolve()), "sha256": hashlib.sha256(Path(model).read_bytes()).hexdigest()},
                **export_facts(run_dir)}
    return export_generator(generator, metadata, run_dir / "export", formats)


def command(*, model: Path, name: str, source: Literal["pytorch-examples"] = "pytorch-examples",
            runs: Path = Path("runs"), formats: tuple[Format, ...] = FORMATS) -> int:
    """Import a model trained elsewhere into RUNS/NAME/export/ (then `make archive NAME=...` serves it).

    Args:
        model: the trained model file, e.g. candy.pth (a state dict; never unpickled code).
        name: run name: writes RUNS/NAME/export/.
        source: the format the model was saved in (pytorch/examples' fast_neural_style TransformerNet).
        runs: runs folder.
        formats: what to write (default: .pt, .pt2 and .onnx).
    """
    return run_and_report("import", lambda: import_model(model, name, runs, source, formats))
