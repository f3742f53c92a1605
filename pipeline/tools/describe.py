"""`python -m pipeline describe --model FILE`: what a model offers and how it was trained, as JSON.
Its styles and strength control: the same description TorchServe's describe API gives for its archive,
with the precision `auto` chooses for it on this machine's CPU."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.serve.controls import model_description
from pipeline.serve.precision import resolve_precision
from pipeline.serve.model_io import load_model


def command(*, model: Path) -> int:
    """Print a model's styles, strength control, generator, training hyper-parameters and the precision it
    runs in on this CPU by default (auto) as JSON.

    Args:
        model: generator.pt2, generator.pt, generator.onnx, a training .ckpt, or a packaged model's name (`starter`: models/starter/).
    """
    try:
        net, meta = load_model(model)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: cannot load model: {e}", file=sys.stderr)
        return 2
    auto = resolve_precision("auto", "cpu", net)
    print(json.dumps({**model_description(meta, net.instyle_controls), "precision": f"{auto} (auto)"}, indent=2))
    return 0
