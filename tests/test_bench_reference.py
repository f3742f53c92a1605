"""The benchmark's yardstick (benchmarks/reference.py) is the public 1.68 M-parameter residual
network and computes the same function as the project's generator with the same weights: the
ratios in docs/benchmarks.md compare like with like."""
from __future__ import annotations

import pytest
import torch

from benchmarks.common import generator_gflop
from benchmarks.reference import ReferenceNet, load_from_generator
from pipeline.model.generators import ResidualGenerator
from pipeline.serve.controls import Conditioning
from pipeline.serve.model_io import load_model
from serving_helpers import shared_export


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    generator = ResidualGenerator().eval()
    with torch.no_grad():  # move the norm affines off 1/0 so they matter
        for p in generator.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return generator, load_from_generator(ReferenceNet(), generator).eval()


def test_reference_has_the_public_parameter_count(pair):
    n = sum(p.numel() for p in pair[1].parameters())
    assert n == 1_679_235  # 1.68 M


@pytest.mark.parametrize("h, w", [(256, 256), (128, 192)])
def test_hand_flop_formula_matches_a_counted_forward(pair, h, w):
    """`generator_gflop` (a hand formula, used for the benchmark's GFLOP/s) against two counts of a
    real forward of the reference: torch's FlopCounterMode (FLOPs = 2 × multiply-adds) and a sum of
    2·Cin·Cout·k²·Hout·Wout over the convolutions actually run, seen by forward hooks."""
    from torch.utils.flop_counter import FlopCounterMode

    reference, convs = pair[1], []
    hooks = [m.register_forward_hook(lambda m, i, o: convs.append((m, o.shape)))
             for m in reference.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            reference(torch.rand(1, 3, h, w))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(convs) == 3 + 2 * 5 + 2 + 1
    by_hooks = sum(2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * out[2] * out[3]
                   for m, out in convs) / 1e9
    counted = counter.get_total_flops() / 1e9
    assert counted == pytest.approx(by_hooks, rel=1e-6)
    assert generator_gflop(h, w) == pytest.approx(counted, rel=0.02)


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 48, 48)])
def test_reference_and_ours_compute_the_same_function(pair, shape):
    generator, reference = pair
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (generator(x) - reference(x)).abs().max().item()
    assert diff < 1e-5, f"max abs diff {diff:.3g}"


@pytest.mark.slow
def test_exported_file_equals_reference(tmp_path_factory):
    """What serving loads (the TorchScript export) against the reference with the same weights."""
    run = shared_export(tmp_path_factory)
    eager, _ = load_model(run / "checkpoints" / "last.ckpt")
    scripted, _ = load_model(run / "export" / "generator.pt")
    reference = load_from_generator(ReferenceNet(), eager).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        diff = (scripted(x) - reference(x)).abs().max().item()
    assert diff < 1e-4, f"max abs diff {diff:.3g}"


def test_mismatched_generator_is_refused():
    with pytest.raises(ValueError):
        load_from_generator(ReferenceNet(), ResidualGenerator(width=16))


@pytest.mark.slow
def test_the_presets_generator_is_the_reference_with_its_resolved_norms(tmp_path):
    """The model `make train` builds (strength control: conditional norms and a strength path), called as a
    request without options is (first style, full strength): the reference network with the (γ, β) its
    norms compute then, through the served .pt2 too."""
    from benchmarks.common import make_run
    from pipeline.serve.controls import call_model

    run = make_run(tmp_path / "run", kind="preset")
    eager, meta = load_model(run / "checkpoints" / "last.ckpt")
    served, _ = load_model(run / "export" / "generator.pt2")
    assert meta["strength_control"] and eager.has_strength
    reference = load_from_generator(ReferenceNet(), eager).eval()
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = reference(x)
        for model in (eager, served):
            diff = (call_model(model, x, None, model.instyle_controls) - want).abs().max().item()
            assert diff < 1e-4, f"max abs diff {diff:.3g}"
        weaker = call_model(served, x, [Conditioning((1.0,), 0.3)], served.instyle_controls)
    assert (weaker - want).abs().max().item() > 1e-3  # the strength path is live: another function at 0.3
    from benchmarks.infer import build  # the bench's export-bf16 row: the served .pt2 with bf16 convolutions

    bf16, mode = build("export-bf16", run)
    with mode():
        levels = (bf16(x) - want).abs().max().item() * 255
    assert 0 < levels <= 4, levels
