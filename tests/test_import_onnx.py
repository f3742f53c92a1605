"""Models trained elsewhere (pytorch/examples' fast_neural_style state dicts) and the ONNX export:
the same function as an independent implementation of that network, any width, clear errors for
anything else, ONNX Runtime parity, and the whole import → archive → handler → stylize path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.__main__ import main as cli
from pipeline.export.archive import archive_run
from pipeline.export.exporter import export_run
from pipeline.model.checkpoint import generator_from_checkpoint, read_checkpoint
from pipeline.model.pytorch_examples import from_pytorch_examples, read_state_dict
from pipeline.serve.inference import run_batch
from pipeline.common.image_codec import DecodedImage
from pipeline.serve.model_io import load_model
from examples_net import examples_state_dict, reference_forward
from serving_helpers import decode_pil, encode_pil, load_handler, make_checkpoint, rng_image, run_handler, ts_request

TOL = 2e-4  # in [0, 1] units; float rounding of a 0..255 network


@pytest.mark.parametrize("width, n_res", [(32, 5), (16, 5), (8, 3)])
def test_imported_generator_computes_that_network(width, n_res):
    sd = examples_state_dict(width, n_res, seed=width, stale=True)
    generator, info = from_pytorch_examples(dict(sd))
    assert (info["width"], info["n_residual"]) == (width, n_res) and len(info["dropped_keys"]) == 2 * (5 + 2 * n_res)
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))  # sizes ×4: upstream's output size
    expected = reference_forward({k: v for k, v in sd.items() if "running" not in k}, x * 255).clamp(0, 255) / 255
    with torch.inference_mode():  # the inference path: channels-last, regrouped decoder
        got = generator(x)
    assert (got - expected).abs().max().item() < TOL
    # tiled inference (whole-image instance-norm statistics) applies to imported models too
    images = [DecodedImage(x[i], None) for i in range(2)]
    tiled = run_batch(generator, images, max_memory_mb=1)
    assert max((t - e).abs().max().item() for t, e in zip(tiled, expected)) < TOL


def test_files_that_are_not_such_a_state_dict_get_clear_errors(tmp_path):
    module = tmp_path / "module.pth"
    torch.save(nn.Conv2d(3, 3, 1), module)  # a whole pickled module
    with pytest.raises(ValueError, match="pickled module"):
        read_state_dict(module)
    (tmp_path / "text.pth").write_text("not a model")
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(tmp_path / "text.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="found list"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.pth")
    sd = examples_state_dict(8, 2)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        from_pytorch_examples({**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"missing keys \['in5.bias'\]"):
        from_pytorch_examples({k: v for k, v in sd.items() if k != "in5.bias"})
    with pytest.raises(ValueError, match="not a pytorch/examples TransformerNet"):
        from_pytorch_examples({"fc.weight": torch.zeros(2, 2)})


@pytest.mark.slow
def test_import_then_archive_serve_and_stylize(tmp_path):
    """`make import` → export files with provenance → the handler serves them → `stylize` gives the
    same pixels as the handler, and both match the network within 1/255."""
    sd = examples_state_dict(16, 5, seed=3, stale=True)
    torch.save(sd, tmp_path / "candy.pth")
    assert cli(["import", "--model", str(tmp_path / "candy.pth"), "--name", "candy", "--runs", str(tmp_path / "runs"),
                "--formats", "[pt,pt2]"]) == 0
    export = tmp_path / "runs" / "candy" / "export"
    meta = json.loads((export / "metadata.json").read_text())
    assert meta["imported_from"]["format"] == "pytorch-examples" and meta["imported_from"]["width"] == 16
    assert meta["generator_kwargs"]["output"] == "clamp" and len(meta["imported_from"]["sha256"]) == 64
    assert archive_run(tmp_path / "runs" / "candy", tmp_path / "store").is_file()
    photo = rng_image(44, 60, seed=4)
    (tmp_path / "in.png").write_bytes(encode_pil(photo))
    handler, context = load_handler(export, serialized="generator.pt2")
    (served,) = run_handler(handler, context, [ts_request(encode_pil(photo))])
    assert served[0] == 200
    assert cli(["stylize", "--model", str(export / "generator.pt"), str(tmp_path / "in.png"), str(tmp_path / "o.png")]) == 0
    offline = np.asarray(decode_pil((tmp_path / "o.png").read_bytes()), dtype=int)
    assert np.abs(offline - np.asarray(decode_pil(served[2]), dtype=int)).max() <= 1
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    expected = reference_forward(sd_clean(sd), x).clamp(0, 255)[0].permute(1, 2, 0).round().numpy()
    assert np.abs(offline - expected).max() <= 1
    assert cli(["import", "--model", str(tmp_path / "missing.pth"), "--name", "x", "--runs", str(tmp_path / "runs")]) == 1


def sd_clean(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if "running" not in k}


@pytest.mark.slow
def test_onnx_export_parity_metadata_and_cli(tmp_path):
    """ONNX: dynamic H/W and batch, live InstanceNormalization, metadata in metadata_props; ONNX Runtime
    equals eager on odd, non-square sizes for our models and imported ones; `stylize` runs it."""
    import onnx

    run = tmp_path / "ours"
    make_checkpoint(run, width=16, n_residual=3)
    export_run(run, formats=("onnx",))
    torch.save(examples_state_dict(8, 2, seed=5), tmp_path / "theirs.pth")
    assert cli(["import", "--model", str(tmp_path / "theirs.pth"), "--name", "theirs", "--runs", str(tmp_path),
                "--formats", "[onnx]"]) == 0
    eager_ours = generator_from_checkpoint(read_checkpoint(run / "checkpoints" / "last.ckpt"))
    eager_theirs, _ = from_pytorch_examples(examples_state_dict(8, 2, seed=5))
    for path, eager in ((run / "export" / "generator.onnx", eager_ours), (tmp_path / "theirs" / "export" / "generator.onnx",
                                                                          eager_theirs)):
        model_proto = onnx.load(str(path))
        assert "InstanceNormalization" in {n.op_type for n in model_proto.graph.node}
        dims = [d.dim_param for d in model_proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] and dims[2] and dims[3], dims  # symbolic batch, height, width
        assert model_proto.opset_import[0].version >= 17
        model, meta = load_model(path)
        assert meta["generator_kwargs"] == json.loads(
            {p.key: p.value for p in model_proto.metadata_props}["instyle"])["generator_kwargs"]
        for shape in ((1, 3, 37, 53), (2, 3, 21, 64), (1, 3, 5, 7)):
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
            with torch.inference_mode():
                assert (model(x) - eager(x)).abs().max().item() < 1e-4, (path, shape)
    (tmp_path / "in.png").write_bytes(encode_pil(rng_image(30, 41)))
    assert cli(["stylize", "--model", str(run / "export" / "generator.onnx"), str(tmp_path / "in.png"),
                str(tmp_path / "o.png")]) == 0
    assert decode_pil((tmp_path / "o.png").read_bytes()).size == (41, 30)


@pytest.mark.slow
def test_width_and_residual_blocks_travel_from_hyper_parameters_to_the_export(tmp_path):
    make_checkpoint(tmp_path / "run", width=8, n_residual=2)
    written = export_run(tmp_path / "run", formats=("pt2",))
    meta = json.loads(written["metadata"].read_text())
    assert meta["generator_kwargs"]["width"] == 8 and meta["generator_kwargs"]["n_residual"] == 2
    model, _ = load_model(written["pt2"])
    assert model.instyle_generator.width == 8 and model.instyle_generator.down[0].conv.weight.shape[0] == 8
    assert Path(written["pt2"]).stat().st_size < 1_000_000  # a quarter-width model is small
