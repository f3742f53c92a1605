"""Models load and run on a device other than the one they were exported on. CI has no GPU, so the
`meta` device stands in for CUDA: a graph that still names the CPU (a constant, a metadata assert)
fails there as it fails on a GPU (checked below with the old loader's `.to(device)`). On an H200 the
same `.pt2` of the presets' model gives the CPU's pixels (docs/serving.md)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.common import make_run
from pipeline.serve.controls import Conditioning, call_model, condition_tensors
from pipeline.serve.model_io import load_model
from pipeline.serve.tiling import stylize_tiled, tileable_generator


@pytest.fixture(scope="module")
def preset_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("device") / "preset", kind="preset")


@pytest.mark.parametrize("form", ["export/generator.pt2", "checkpoints/last.ckpt"])
def test_presets_model_runs_and_tiles_on_another_device(preset_run, form):
    model, _ = load_model(preset_run / form, device="meta")
    controls = model.instyle_controls
    assert controls.strength
    x = torch.empty(2, 3, 45, 61, device="meta")
    conds = [Conditioning((1.0,), 0.3), Conditioning((1.0,), 1.0)]
    with torch.inference_mode():
        y = call_model(model, x, conds, controls)
        generator = tileable_generator(model)
        assert generator is not None and next(generator.parameters()).device.type == "meta"
        style, strength = condition_tensors(conds[:1], controls, x[:1])
        tiled = stylize_tiled(generator, x[:1], 32, style, strength)
    assert y.device.type == tiled.device.type == "meta" and y.shape == x.shape and tiled.shape == (1, 3, 45, 61)


def test_moving_only_the_parameters_is_not_enough(preset_run):
    """Why the loader rewrites the program: the graph itself names the CPU."""
    program = torch.export.load(str(preset_run / "export" / "generator.pt2"))
    module = program.module().to("meta")
    x = torch.empty(1, 3, 32, 32, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)), torch.inference_mode():
        module(x, torch.ones(1, 1, device="meta"), torch.ones(1, device="meta"))
