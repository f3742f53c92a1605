"""Inference precision (pipeline.serve.precision): bf16 / fp16 convolutions with everything else in fp32,
`auto` = bf16 only on a CPU with native bf16, fp32-only forms refused, and the rule reaching every form
(eager, the `.pt2` graph, torch.compile)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.common.cpu import native_bf16
from pipeline.serve import precision as P
from pipeline.serve.model_io import quiet_jit
from pipeline.serve.precision import LowPrecisionConvolutions, check_precision, precision_mode, resolve_precision


def rounded(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype).float()


@pytest.fixture
def every_convolution(monkeypatch):
    """The rule for every convolution, however few its input channels (the tests' small layers)."""
    monkeypatch.setattr(P, "LOW_PRECISION_MIN_CHANNELS", 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_convolution_is_the_fp32_sum_of_rounded_operands_rounded_once(dtype, every_convolution):
    """The definition, computed independently: fp32 arithmetic on operands rounded to `dtype`, the result
    rounded to `dtype` once (the kernels accumulate in fp32). Bias given by position, keyword or not at all."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 5, 13, 11, generator=g), torch.randn(7, 5, 3, 3, generator=g), torch.randn(7, generator=g)
    exact = F.conv2d(x, w, b, padding=1)
    want = F.conv2d(rounded(x, dtype), rounded(w, dtype), rounded(b, dtype), padding=1).to(dtype).float()
    want_nobias = F.conv2d(rounded(x, dtype), rounded(w, dtype), None, padding=1).to(dtype).float()
    def ulp(t: torch.Tensor) -> torch.Tensor:  # one unit in the last place of each output value (an upper bound)
        return (t.abs() * torch.finfo(dtype).eps).clamp_min(1e-6)
    with torch.inference_mode(), LowPrecisionConvolutions(dtype):
        calls = [F.conv2d(x, w, b, padding=1), F.conv2d(x, w, bias=b, padding=1),
                 torch.ops.aten.conv2d.default(x, w, b, [1, 1], [1, 1])]
        nobias = F.conv2d(x, w, padding=1)
        relu = F.relu(x)  # not a convolution: untouched
    for y in calls:
        assert y.dtype == torch.float32
        assert ((y - want).abs() <= ulp(want)).all()
        assert (y - exact).abs().max() > (y - want).abs().max()  # it did run in low precision
    assert ((nobias - want_nobias).abs() <= ulp(want_nobias)).all()
    assert torch.equal(relu, F.relu(x))


def test_few_input_channels_stay_fp32():
    """Below LOW_PRECISION_MIN_CHANNELS input channels (the photo's 3, the first layer's `width`) the
    convolution is the fp32 one, bit for bit; at the threshold it is rounded."""
    g = torch.Generator().manual_seed(2)
    n = P.LOW_PRECISION_MIN_CHANNELS
    few, many = torch.randn(1, n - 1, 9, 9, generator=g), torch.randn(1, n, 9, 9, generator=g)
    w_few, w_many = torch.randn(4, n - 1, 3, 3, generator=g), torch.randn(4, n, 3, 3, generator=g)
    with torch.inference_mode(), LowPrecisionConvolutions(torch.bfloat16):
        y_few, y_many = F.conv2d(few, w_few), F.conv2d(many, w_many)
    assert torch.equal(y_few, F.conv2d(few, w_few))
    assert (y_many - F.conv2d(many, w_many)).abs().max() > 1e-4


def test_bf16_keeps_the_starter_within_two_levels_of_fp32():
    """The committed starter model (trained, width 16, 8 styles) on two photos at 192², each style and a
    mix at strength 0.3: bf16 is within 2 levels of fp32 in 8 bit, and it did run in bf16. (Rounding the
    first convolutions too, 3 and 16 input channels, gives up to 5 levels on trained models.)"""
    from skimage import data

    from pipeline.serve.controls import Conditioning, call_model
    from pipeline.serve.model_io import load_model

    model, _ = load_model("starter")
    photos = [torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
              for img in (data.astronaut(), data.coffee())]
    x = torch.cat([F.interpolate(p, size=(192, 192), mode="area") for p in photos])
    controls = model.instyle_controls
    n = len(controls.styles)
    conds = [Conditioning(tuple(float(i == k) for i in range(n)), 1.0) for k in range(n)]
    conds.append(Conditioning(tuple(1.0 / n for _ in range(n)), 0.3))
    worst, moved = 0.0, 0.0
    for cond in conds:
        def run(precision: str) -> torch.Tensor:
            with torch.inference_mode(), precision_mode("cpu", precision):
                return (call_model(model, x, [cond] * len(x), controls).clamp(0, 1) * 255).round()
        diff = (run("bf16") - run("fp32")).abs()
        worst, moved = max(worst, diff.max().item()), max(moved, diff.mean().item())
    assert worst <= 2 and moved > 0, (worst, moved)


def test_an_unpadded_convolution_runs_centred_so_a_dc_offset_costs_no_precision(every_convolution):
    """On input with a large per-channel offset (post-ReLU activations have one), an unpadded convolution
    (the inference form pads with explicit ops) equals float64 arithmetic to ~bf16 rounding of the
    *varying* part; rounding the offset along (what a padded or plain call does) is far worse.
    Grouped and padded calls keep the plain rule."""
    g = torch.Generator().manual_seed(1)
    x = 40 + torch.randn(1, 16, 24, 24, generator=g)
    w, b = torch.randn(8, 16, 3, 3, generator=g) / 12, torch.randn(8, generator=g)
    exact = F.conv2d(x.double(), w.double(), b.double())
    plain = F.conv2d(x.to(torch.bfloat16), w.to(torch.bfloat16), b.to(torch.bfloat16)).double()
    with torch.inference_mode(), LowPrecisionConvolutions(torch.bfloat16):
        centred = F.conv2d(x, w, b).double()
        graph = torch.ops.aten.convolution.default(x, w, b, [1, 1], [0, 0], [1, 1], False, [0, 0], 1).double()
        grouped = F.conv2d(x, w[:, :8], b, groups=2).double()
    assert (centred - graph).abs().max() < 1e-5
    assert (centred - exact).abs().max() * 10 < (plain - exact).abs().max()
    # the centred result is the offset-free part rounded once: within a few bf16 ulps of its magnitude
    varying = (exact - exact.mean(dim=(2, 3), keepdim=True)).abs().max()
    assert (centred - exact).abs().max() < 4 * varying * 2 ** -8
    want = F.conv2d(x.to(torch.bfloat16), w[:, :8].to(torch.bfloat16), b.to(torch.bfloat16), groups=2).double()
    assert (grouped - want).abs().max() < 1e-4


def test_auto_is_bf16_only_where_the_cpu_has_it_and_never_for_fp32_only_forms(monkeypatch, auto_precision):
    monkeypatch.setattr(P, "native_bf16", lambda device="cpu": torch.device(device).type == "cpu")
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "fp32"
    with quiet_jit():
        scripted = torch.jit.script(torch.nn.Conv2d(3, 3, 1))
    assert resolve_precision("auto", "cpu", scripted) == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16"
    monkeypatch.setattr(P, "native_bf16", lambda device="cpu": False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: given, however slow
    with pytest.raises(ValueError, match="TorchScript"):
        check_precision("bf16", scripted)
    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16, fp16"):
        check_precision("fp8")
    assert isinstance(precision_mode("cpu", "fp32"), type(precision_mode("cpu", "fp32")))
    assert not isinstance(precision_mode("cpu", "fp32"), LowPrecisionConvolutions)
    assert precision_mode("cpu", "bf16").dtype == torch.bfloat16
    monkeypatch.setenv("INSTYLE_PRECISION", "fp16")  # an operator's choice replaces auto, not explicit choices
    assert resolve_precision("auto", "cpu") == "fp16" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="TorchScript"):  # and is checked like one
        resolve_precision("auto", "cpu", scripted)


def test_native_bf16_follows_the_cpu_flags():
    """The detection agrees with /proc/cpuinfo (Linux): AVX512-BF16 or AMX-BF16 means native."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert native_bf16("cpu") == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert not native_bf16("cuda")


@pytest.fixture(scope="module")
def exported_trio(tiny_trio, tmp_path_factory):
    from pipeline.export.exporter import export_run

    return export_run(tiny_trio.parent.parent, tiny_trio, formats=["pt2"])["pt2"]


@pytest.mark.slow  # its subject is the exported .pt2 (a torch.export, ~7 s here); the eager form's bf16: test_gpu_serving.py
def test_bf16_reaches_every_form_and_stays_close_to_fp32(tiny_trio, exported_trio, every_convolution):
    """The .pt2 graph, the .ckpt's eager generator and the .pt2's eager twin (what tiling runs) give the same
    bf16 output, which differs from fp32 by bf16 rounding only."""
    from pipeline.serve.controls import Conditioning, call_model
    from pipeline.serve.model_io import load_model

    graph, _ = load_model(exported_trio)
    eager, _ = load_model(tiny_trio)
    x = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(3))
    conds = [Conditioning((0.2, 0.5, 0.3), 0.3), Conditioning((1.0, 0.0, 0.0), 1.0)]
    controls = graph.instyle_controls

    def run(model, precision):
        with torch.inference_mode(), precision_mode("cpu", precision):
            return call_model(model, x, conds, controls)

    fp32 = run(graph, "fp32")
    outs = [run(m, "bf16") for m in (graph, eager, graph.instyle_generator)]
    for y in outs[1:]:
        assert (y - outs[0]).abs().max() < 1e-5
    levels = ((outs[0] - fp32).abs() * 255).max().item()
    assert 0 < levels <= 2


def test_torch_compile_traces_the_mode(every_convolution):
    """torch.compile under the mode runs the convolutions in bf16 (the same values as eager under it)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3))
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fp32 = net(x)
        with LowPrecisionConvolutions(torch.bfloat16):
            eager = net(x)
            compiled = torch.compile(net, backend="aot_eager", dynamic=False)(x)
    assert (eager - fp32).abs().max() > 1e-4
    assert (compiled - eager).abs().max() < 1e-6
