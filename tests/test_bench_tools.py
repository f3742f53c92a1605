"""The standing benchmark's own logic, apart from any timing: the merge of interleaved rounds, the
`widths` section's reading of a run, the `loader` section's shards, and the command's refusal of bad options."""
from __future__ import annotations

import pytest
import torch

from benchmarks import bench, loader, widths
from benchmarks.reference import ReferenceNet
from pipeline.model.generators import build_generator


def test_rounds_merge_into_the_median_of_each_rounds_median():
    def result(median: float, low: float, rss: float) -> dict:
        return {"variant": "export", "size": "512", "batches": {
            "1": {"median_s": median, "min_s": low, "images_per_s": 1 / median, "gflops": 80.8 / median,
                  "peak_rss_mb": rss, "repeats": 5}}}

    rounds = [result(0.3, 0.28, 900), result(0.5, 0.45, 950), result(0.4, 0.35, 920)]
    merged = bench.merge_rounds(rounds)["batches"]["1"]
    assert merged["median_s"] == 0.4 and merged["min_s"] == 0.28 and merged["peak_rss_mb"] == 950
    assert merged["images_per_s"] == pytest.approx(2.5) and merged["gflops"] == pytest.approx(80.8 / 0.4)
    assert bench.merge_rounds(rounds)["rounds"] == rounds and bench.merge_rounds(rounds[:1]) == rounds[0]


@pytest.mark.parametrize("width", [8, 16])
def test_widths_reads_the_width_and_counts_the_parameters_of_a_run(tmp_path, width):
    """A plain generator at `width` has exactly the parameters of the independently written reference
    network of that width (the public layout), as read back from the run's checkpoint."""
    generator = build_generator("residual", width=width)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": {"arch": "residual", "width": width},
                "state_dict": {"generator." + k: v for k, v in generator.state_dict().items()}}, ckpt)
    expected = sum(p.numel() for p in ReferenceNet(width, 5).parameters())
    assert widths.generator_parameters(tmp_path) == (width, expected)
    assert expected < 1_679_235 * (width / 32) ** 2 * 1.1  # parameters scale with the width's square


def test_loader_refuses_a_folder_without_shards(tmp_path):
    with pytest.raises(ValueError, match="no train-\\*.tar shards"):
        loader.shards_for(tmp_path)
    (tmp_path / "train-000000.tar").write_bytes(b"")
    assert loader.shards_for(tmp_path) == tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--sections", "infer,bogus"], "unknown section(s) bogus"),
    (["--rounds", "0"], "--rounds must be ≥ 1"),
    (["--width-content", "photos"], "--width-content needs --width-runs"),
    (["--width-runs", "no/such/run"], "no checkpoints/last.ckpt there"),
    (["--shards", "."], "no train-*.tar shards there"),
])
def test_bad_options_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_uploaded_photo_is_the_jpeg_of_the_benchmark_photo():
    """The serving sections' request body decodes to the benchmark's photo (closer to it than to another seed's)."""
    import io

    import numpy as np
    from PIL import Image

    from benchmarks.common import photo_jpeg, photo_uint8

    own, other = photo_uint8(64, 96, seed=1), photo_uint8(64, 96, seed=2)
    with Image.open(io.BytesIO(photo_jpeg(64, 96, seed=1))) as im:
        assert im.format == "JPEG" and im.size == (96, 64)
        decoded = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(decoded - own).mean() < 0.5 * np.abs(decoded - other).mean()
