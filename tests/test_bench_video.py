"""benchmarks/video.py on a tiny model: it times the image CLI's exact per-frame path, and its
numbers are consistent (frames / seconds); the end-to-end mode writes and reads back a real clip."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest

from benchmarks.video import frames_uint8, main, stylize_frames
from pipeline.export.exporter import export_run
from pipeline.serve.model_io import load_model
from pipeline.serve.precision import resolve_precision
from pipeline.tools.stylize import stylize_bytes
from serving_helpers import decode_pil, encode_pil, make_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    make_checkpoint(run, width=8, n_residual=1)
    export_run(run, formats=("pt2",))
    return run


@pytest.mark.slow
def test_frames_are_the_image_commands_pixels(run):
    model, _ = load_model(run / "export" / "generator.pt2")
    frames = frames_uint8(3, 24, 40)
    assert len({f.tobytes() for f in frames}) == 3 and frames[0].dtype == np.uint8
    one = stylize_frames(model, frames, 1, "cpu", None, "auto")
    for frame, y in zip(frames, one):  # batch 1: what `stylize` writes for that frame as a PNG
        png, _ = stylize_bytes(model, encode_pil(frame), {"format": "png"})
        assert np.array_equal(np.asarray(decode_pil(png).convert("RGB")), y)
    batched = stylize_frames(model, frames, 2, "cpu", None, "auto")
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(one, batched)) <= 1  # float rounding only


@pytest.mark.slow
def test_per_frame_and_end_to_end_results(run, tmp_path, capsys):
    assert main(["--run", str(run), "--size", "40x24", "--frames", "3", "--batches", "1,2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["size"] == "40x24" and result["device"] == "cpu"
    assert result["precision"] == resolve_precision("auto", "cpu")  # what `stylize` runs on this CPU
    for batch in ("1", "2"):
        m = result["batches"][batch]
        assert m["frames"] == 3 and m["one_call_per_batch"] is True
        assert m["frames_per_s"] == pytest.approx(3 / m["seconds"]) and m["ms_per_frame"] == pytest.approx(
            1000 * m["seconds"] / 3)
    assert main(["--run", str(run), "--size", "48x32", "--frames", "5", "--end-to-end", "--work", str(tmp_path)]) == 0
    clip = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert clip["frames"] == clip["decoded"] == 5 and clip["frames_per_s"] == pytest.approx(5 / clip["seconds"])
    with av.open(str(tmp_path / "stylized-48x32.mp4")) as container:
        shapes = [f.to_ndarray(format="rgb24").shape for f in container.decode(video=0)]
    assert shapes == [(32, 48, 3)] * 5
    with pytest.raises(SystemExit):
        main(["--run", str(run), "--end-to-end"])  # no --work
