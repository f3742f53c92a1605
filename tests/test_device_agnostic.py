"""Every exported form of every model kind is served on a device other than the CPU. CI has no GPU, so
CUDA is faked: under FakeTensorMode `torch.empty(..., device="cuda")` works without a GPU, and a CPU
tensor or a CPU-pinned graph mixed into the computation raises the device-mismatch error a GPU would
(`test_a_graph_naming_the_cpu_fails_on_fake_cuda` shows it). Weights are moved as `.to("cuda")` and
`torch.jit.load(map_location="cuda")` move them on a GPU (`_to_fake_cuda`; files cannot be loaded
under the fake mode). ONNX Runtime here has only the CPU provider and cannot take fake tensors: the
`.onnx` is checked by a scan of its graph and served tiled (its eager twin) on fake CUDA."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.export.exporter import example_inputs, input_dims, serving_form
from pipeline.export.graph_devices import device_constants, strip_devices
from pipeline.model.generators import ResidualGenerator
from pipeline.serve.controls import Conditioning
from pipeline.common.image_codec import DecodedImage, decode
from pipeline.serve.inference import device_batch, run_batch
from pipeline.serve.model_io import load_model
from serving_helpers import encode_pil, make_checkpoint, rng_image

KINDS = {"plain": {}, "trio": {"styles": ["a", "b", "c"]}, "strength": {"strength": True},
         "compact": {"arch": "compact", "styles": ["a", "b"], "strength": True}}
CONDITIONS = {"plain": None, "trio": [Conditioning((0.2, 0.3, 0.5)), Conditioning((0.0, 1.0, 0.0))],
              "strength": [Conditioning((1.0,), 0.4), Conditioning((1.0,), 1.0)],
              "compact": [Conditioning((0.3, 0.7), 0.4), Conditioning((0.0, 1.0), 1.0)]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pipeline.export.exporter import export_run

    root = tmp_path_factory.mktemp("device")
    for kind, kwargs in KINDS.items():
        make_checkpoint(root / kind, width=8, n_residual=1, **kwargs)
        export_run(root / kind)
    return root


def _to_fake_cuda(model, mode: FakeTensorMode):
    """What loading for CUDA does to the weights, with fake tensors: parameters and buffers of every torch
    module (`.to`), the tensor constants of a frozen TorchScript graph (`map_location`)."""
    modules = [model] + [model.__dict__.get("instyle_generator")]
    for module in (m for m in modules if isinstance(m, nn.Module)):
        if isinstance(module, torch.jit.ScriptModule):
            for node in module.graph.findAllNodes("prim::Constant"):
                if node.output().type().kind() == "TensorType":
                    node.t_("value", mode.from_tensor(node.t("value")).to("cuda"))
            continue
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                m._parameters[name] = nn.Parameter(mode.from_tensor(p).to("cuda"), requires_grad=False)
            for name, b in list(m._buffers.items()):
                m._buffers[name] = mode.from_tensor(b).to("cuda")


class _Copies(TorchDispatchMode):
    """Records the dtype of every copy onto CUDA."""

    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and str(kwargs.get("device", "")).startswith("cuda"):
            self.dtypes.append(args[0].dtype)
        return func(*args, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["pt2", "pt", "onnx"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_exported_graphs_name_no_device(runs, kind, form):
    assert device_constants(runs / kind / "export" / f"generator.{form}") == []


@pytest.mark.slow
@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("form", ["pt2", "pt", "onnx"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_form_and_kind_is_served_on_fake_cuda(runs, kind, form, tiled):
    if form == "onnx" and not tiled:
        pytest.skip("ONNX Runtime has only the CPU provider here and cannot run fake tensors")
    model, _ = load_model(runs / kind / "export" / f"generator.{form}")
    conds = CONDITIONS[kind]
    with FakeTensorMode() as mode:
        _to_fake_cuda(model, mode)
        images = [DecodedImage(mode.from_tensor(torch.zeros(3, 37, 53, dtype=torch.uint8)), None)] * 2
        # optimized_execution off: TorchScript's profiling executor compares tensors (aten.equal), which
        # fake tensors cannot answer; the graph run is the same
        with torch.jit.optimized_execution(False):
            out = run_batch(model, images, "cuda", None, conds, tiled=tiled)
    # fake tensors carry no values: the point is that every layer found its weights and inputs on the
    # device (a CPU tensor left anywhere raises a device mismatch); run_batch hands the results back on
    # the CPU for encoding
    assert [(tuple(y.shape), y.device.type) for y in out] == [((3, 37, 53), "cpu")] * 2


def test_pixels_cross_to_the_device_as_decoded_8_bit():
    photo = decode(encode_pil(rng_image(9, 13)))
    assert photo.pixels.dtype == torch.uint8
    with FakeTensorMode() as mode:
        image = DecodedImage(mode.from_tensor(photo.pixels), None)
        with _Copies() as copies:  # (outside inference_mode, where this mode does not see the copy)
            x = device_batch([image, image], "cuda")
    assert copies.dtypes == [torch.uint8] and x.dtype == torch.float32 and x.device.type == "cuda"
    torch.testing.assert_close(device_batch([photo], "cpu")[0], photo.rgb, rtol=0, atol=0)


@pytest.mark.slow
def test_a_graph_naming_the_cpu_fails_on_fake_cuda():
    """Why the export strips devices (and why these tests can fail): torch.export names the CPU where a
    conditioned generator casts its style weights and strengths."""
    generator = ResidualGenerator(width=4, n_residual=0, strength=True).eval()
    with torch.no_grad():
        program = torch.export.export(serving_form(generator), example_inputs(generator, (2, 3, 32, 32)),
                                      dynamic_shapes=input_dims(generator))
    assert device_constants(program)

    def run(module):
        with FakeTensorMode() as mode, torch.inference_mode():
            _to_fake_cuda(module, mode)
            x = torch.empty(1, 3, 32, 32, device="cuda")
            return module(x, torch.ones(1, 1, device="cuda"), torch.ones(1, device="cuda"))

    with pytest.raises((RuntimeError, AssertionError), match="device"):
        run(program.module())
    assert strip_devices(program) is program and device_constants(program) == []
    assert run(program.module()).device.type == "cuda"
