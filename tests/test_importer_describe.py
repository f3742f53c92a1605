"""`python -m pipeline import` and `describe`, in-process."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pipeline.tools import describe
from pipeline.serve.model_io import load_model
from examples_net import examples_state_dict, reference_forward
from serving_helpers import make_checkpoint
from tool_helpers import STYLES

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


# ---- pipeline/export/import_command.py -----------------------------------------------------------------

def test_import_writes_a_torchscript_model_that_computes_the_source_network(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`import` of a pytorch/examples state dict: the .pt computes that network (independent forward)
    and metadata.json records the source file's sha256, width and blocks."""
    from pipeline.export import import_command

    sd = examples_state_dict(width=8, n_res=1, seed=7)
    torch.save(sd, tmp_path / "candy.pth")
    assert import_command.command(model=tmp_path / "candy.pth", name="candy", runs=tmp_path / "runs", formats=("pt",)) == 0
    printed = capsys.readouterr().out.split()
    export = tmp_path / "runs" / "candy" / "export"
    assert sorted(p.name for p in export.iterdir()) == ["generator.pt", "metadata.json"]
    assert printed == ["pt", str(export / "generator.pt"), "metadata", str(export / "metadata.json")]
    meta = json.loads((export / "metadata.json").read_text())
    assert meta["imported_from"]["sha256"] == hashlib.sha256((tmp_path / "candy.pth").read_bytes()).hexdigest()
    assert (meta["imported_from"]["width"], meta["imported_from"]["n_residual"]) == (8, 1)
    assert meta["generator_kwargs"] == {"norm": "instance", "padding": "reflect", "upsample": "nearest", "width": 8,
                                        "n_residual": 1, "output": "clamp"}
    assert meta["run"] == "candy" and meta["formats"] == ["pt"] and meta["checkpoint"] is None
    model, _ = load_model(export / "generator.pt")
    x = torch.rand(2, 3, 24, 36, generator=torch.Generator().manual_seed(3))
    expected = reference_forward(sd, x * 255).clamp(0, 255) / 255
    with torch.inference_mode():
        assert (model(x) - expected).abs().max().item() < 2e-4


def test_import_refuses_bad_source_name_and_file_without_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Unknown source, a name that is not a plain run name, a missing or non-state-dict file: clear
    errors (exit 1 from the command) and no run folder."""
    from pipeline.export import import_command

    torch.save(examples_state_dict(width=8, n_res=1), tmp_path / "m.pth")
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="supported: pytorch-examples"):
        import_command.import_model(tmp_path / "m.pth", "ok", runs, source="caffe")
    for bad in ("../escape", "with space", ".hidden", ""):
        with pytest.raises(ValueError, match="use letters, digits"):
            import_command.import_model(tmp_path / "m.pth", bad, runs)
    assert import_command.command(model=tmp_path / "missing.pth", name="x", runs=runs) == 1
    err = capsys.readouterr().err
    assert err.startswith("import failed:") and "missing.pth does not exist" in err
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    assert import_command.command(model=tmp_path / "other.pth", name="x", runs=runs) == 1
    assert "not a pytorch/examples TransformerNet" in capsys.readouterr().err
    assert not runs.exists()


# ---- pipeline/tools/describe.py ------------------------------------------------------------------

def test_describe_lists_styles_strength_and_generator(tiny_trio: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The JSON of a 3-style strength checkpoint: its style names in order (first = default), the
    strength control, the generator's size and the training hyper-parameters it was written with."""
    assert describe.command(model=tiny_trio) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["styles"] == STYLES and info["default_style"] == "a" and info["strength_control"] is True
    assert info["generator"]["arch"] == "residual" and info["generator"]["width"] == 8
    assert info["generator"]["n_residual"] == 1 and info["generator"]["n_styles"] == 3
    assert info["global_step"] == 42 and info["hyper_parameters"]["style_image"] == "styles/a.jpg,styles/b.jpg,styles/c.jpg"
    plain = make_checkpoint(tmp_path / "plain", width=8, n_residual=1)  # before multi-style: one style, no control
    assert describe.command(model=plain) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["styles"] == ["mosaic"] and info["strength_control"] is False and info["style_image"] == "mosaic.jpg"


def test_describe_reports_unloadable_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing file or one that is not a model: exit 2, the reason on stderr, nothing on stdout."""
    assert describe.command(model=tmp_path / "missing.pt2") == 2
    (tmp_path / "notes.txt").write_text("hello")
    assert describe.command(model=tmp_path / "notes.txt") == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("error: cannot load model") == 2 and "does not exist" in out.err
