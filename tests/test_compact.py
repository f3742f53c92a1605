"""The compact layout (arch `compact`, pipeline/model/generators.py): what it costs, counted, and that every
exported form computes the eager network. Its other properties are tested with the classic layout's:
sizes, contrast invariance and the inference form in test_generators.py, tiling in test_tiling.py, fake
CUDA in test_device_agnostic.py, distillation in test_distill.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.model.generators import build_generator
from pipeline.serve.model_io import load_model
from serving_helpers import make_checkpoint

FRAME = (360, 640)  # the webcam frame of the real-time target (docs/compact.md)


def macs(generator: nn.Module, size: tuple[int, int] = FRAME) -> float:
    """Multiply-accumulates of one inference-form call on a frame of `size`, counted by torch."""
    x = torch.rand(1, 3, *size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        generator(*((x, torch.ones(1, generator.n_styles), torch.ones(1)) if generator.conditioned else (x,)))
    return counter.get_total_flops() / 2


def test_cost_is_a_fifteenth_of_the_classic_and_nothing_runs_at_full_resolution():
    """The distill preset's design (width 12, 3 blocks) against the starter's (classic, width 16, 5 blocks)."""
    compact = build_generator("compact", width=12, n_residual=3, n_styles=8, strength=True).for_inference()
    classic = build_generator("residual", width=16, n_residual=5, n_styles=8, strength=True).for_inference()
    assert macs(compact) < 0.5e9 and macs(compact) < macs(classic) / 15
    seen: list[tuple[int, int]] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
             for m in compact.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():  # the inference form calls some convolutions functionally: count the training form too
        compact.inference = False
        compact(torch.rand(1, 3, *FRAME), torch.ones(1, 8), torch.ones(1))
    for h in hooks:
        h.remove()
    # every convolution reads at most ¼ of the (padded) frame's rows and columns
    assert seen and max(h for h, _ in seen) <= FRAME[0] // 4 + 8 and max(w for _, w in seen) <= FRAME[1] // 4 + 8


def test_width_and_depth_are_the_knobs():
    small = build_generator("compact", width=8, n_residual=1)
    big = build_generator("compact", width=32, n_residual=5)
    assert macs(small.for_inference()) < macs(big.for_inference())
    assert big.res[0].body[0].conv.in_channels == 96 and len(big.res) == 5  # the body: 3·width at ⅛ resolution


@pytest.fixture(scope="module")
def compact_run(tmp_path_factory) -> Path:
    """A compact 2-style model with the strength control, exported in every format."""
    from pipeline.export.exporter import export_run

    run = tmp_path_factory.mktemp("runs") / "compact"
    make_checkpoint(run, arch="compact", width=8, n_residual=2, styles=["a", "b"], strength=True)
    export_run(run, formats=("pt", "pt2", "onnx"))
    return run


@pytest.mark.slow
def test_every_export_computes_the_eager_network(compact_run: Path):
    """.pt, .pt2 and .onnx (ONNX Runtime) agree with the eager generator on odd sizes, a style mix and a
    strength, within float rounding."""
    run = compact_run
    eager, _ = load_model(run / "checkpoints" / "last.ckpt")
    for size in ((37, 53), (1, 1), (130, 211)):
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        style, strength = torch.tensor([[0.3, 0.7], [1.0, 0.0]]), torch.tensor([0.5, 1.0])
        with torch.inference_mode():
            want = eager(x, style, strength)
            for form in ("pt", "pt2", "onnx"):
                model, meta = load_model(run / "export" / f"generator.{form}")
                assert meta["arch"] == "compact"
                got = model(x, style, strength)
                assert (got - want).abs().max().item() < 1e-4, (form, size)


@pytest.mark.slow
def test_torchserve_handler_serves_the_compact_pt2(compact_run: Path):
    """The TorchServe handler on the compact `.pt2`, as a worker runs it: the X-Style / X-Strength headers give
    the eager generator's pixels (8-bit rounding apart)."""
    import numpy as np

    from serving_helpers import decode_pil, encode_pil, load_handler, rng_image, run_handler, ts_request

    handler, context = load_handler(compact_run / "export", serialized="generator.pt2")
    photo = rng_image(45, 67)
    status, _, body = run_handler(handler, context, [ts_request(encode_pil(photo), headers={
        "X-Style": "a:0.25,b:0.75", "X-Strength": "0.6"})])[0]
    assert status == 200, body[:300]
    eager, _ = load_model(compact_run / "checkpoints" / "last.ckpt")
    x = torch.from_numpy(np.asarray(photo)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        want = (eager(x, torch.tensor([[0.25, 0.75]]), torch.tensor([0.6]))[0].clamp(0, 1) * 255).round()
    got = torch.from_numpy(np.asarray(decode_pil(body)).copy()).permute(2, 0, 1).float()
    assert (got - want).abs().max().item() <= 1
