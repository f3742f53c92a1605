"""The small benchmark tools behind docs/serving.md's figures: PNG encode costs, per-convolution bf16
sensitivity, and the workers benchmark's CPU and metrics readers (their servers run in `make bench`)."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data

from benchmarks import png, precision_layers, workers


def test_handler_metrics_are_read_from_prometheus_text():
    text = ("# HELP x\nModelMs{ModelName=\"m\",Level=\"Model\",Hostname=\"vm\",} 529.95\n"
            "EncodeMs{ModelName=\"m\",Level=\"Model\",Hostname=\"vm\",} 4.8E1\nDecodeMsX{a=\"b\",} 1\n")
    assert workers.handler_ms(text) == {"ModelMs": 529.95, "EncodeMs": 48.0}


def test_cpu_seconds_of_a_process_group_include_this_process():
    sum(i * i for i in range(200_000))  # some CPU time of our own
    found = workers.cpu_seconds(os.getpgid(0))
    assert os.getpid() in found and found[os.getpid()][1] > 0


def test_png_cost_is_of_a_lossless_encode_at_each_strategy():
    arr = np.asarray(Image.fromarray(data.astronaut()).resize((64, 64)))
    for strategy in png.STRATEGIES.values():
        seconds, size = png.encode_cost(arr, 1, strategy)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1, compress_type=strategy)
        assert seconds > 0 and size == buf.tell()
        assert np.array_equal(np.asarray(Image.open(buf)), arr)


@pytest.mark.slow
def test_per_convolution_sensitivity_on_the_starter(tmp_path, capsys):
    """Every convolution of the starter is numbered and scored; the first one alone in bf16 moves pixels."""
    Image.fromarray(data.astronaut()).resize((48, 48)).save(tmp_path / "a.png")
    assert precision_layers.main(["--model", "starter", "--photos", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "16 convolutions" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 16
    first_alone = [float(v) for v in rows[0].split("|")[2].split(",")]  # max, mean, pixels > 2
    assert first_alone[1] > 0


def test_rounds_merge_into_the_median_of_each_rounds_median():
    from benchmarks.bench import merge_rounds

    def result(median: float, low: float, rss: float) -> dict:
        return {"variant": "export", "size": "512", "batches": {
            "1": {"median_s": median, "min_s": low, "images_per_s": 1 / median, "gflops": 80.8 / median,
                  "peak_rss_mb": rss, "repeats": 5}}}

    rounds = [result(0.3, 0.28, 900), result(0.5, 0.45, 950), result(0.4, 0.35, 920)]
    merged = merge_rounds(rounds)["batches"]["1"]
    assert merged["median_s"] == 0.4 and merged["min_s"] == 0.28 and merged["peak_rss_mb"] == 950
    assert merged["images_per_s"] == pytest.approx(2.5) and merged["gflops"] == pytest.approx(80.8 / 0.4)
    assert merge_rounds(rounds)["rounds"] == rounds and merge_rounds(rounds[:1]) == rounds[0]
