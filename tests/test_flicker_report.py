"""flicker-report: the H.264 clip is a faithful round trip, and the report's numbers are the metric's."""
from __future__ import annotations

import pytest


from pipeline.export.exporter import export_run
from pipeline.quality import flicker_report
from pipeline.quality.stability import clip_warping_error, synthetic_clip
from pipeline.common.image_sources import load_image
from serving_helpers import encode_pil, make_checkpoint, rng_image


def test_h264_round_trip_keeps_frames_and_is_close():
    frames, _ = synthetic_clip(load_image("skimage:astronaut"), 6, (48, 64), "pan")
    back = flicker_report.h264_round_trip(frames)
    assert back.shape == frames.shape
    mse = (back - frames).pow(2).mean().item()
    assert 0 < mse < 10 ** (-30 / 10)  # lossy, yet above 30 dB PSNR


@pytest.mark.slow
def test_report_errors_are_the_metric_of_the_stylized_clips(tmp_path, monkeypatch, vgg_weights):
    monkeypatch.setattr(flicker_report, "FRAMES", 5)
    monkeypatch.setattr(flicker_report, "SIZE", (40, 48))
    runs = []
    for i, weight in enumerate((0.0, 50.0)):
        run = tmp_path / f"r{i}"
        make_checkpoint(run, seed=i, strength=True, style_image="skimage:coffee", width=8, n_residual=1, style_size=64,
                        stability_weight=weight)
        export_run(run, formats=("pt2",))
        runs.append(run)
    content = tmp_path / "photos"
    content.mkdir()
    (content / "a.png").write_bytes(encode_pil(rng_image(60, 80, seed=3)))
    report, data = flicker_report.build_report(runs, content, limit=1, size=48)
    assert set(report["clips"]) == {"a-pan", "a-zoom", "astronaut-h264"}
    for name, (frames, motion) in data["made"].items():
        assert report["clips"][name]["input"] == clip_warping_error(frames, motion)
        for r in report["runs"]:
            assert r["errors"][name] == clip_warping_error(data["outputs"][r["run"]][name], motion)
    assert [r["stability_weight"] for r in report["runs"]] == [0.0, 50.0]
    text = flicker_report.markdown(report)
    assert "| r0 | 0 |" in text and "1.00×" in text
    out = tmp_path / "side.mp4"
    flicker_report.animation(data["made"], data["outputs"], "a-pan", out)
    assert out.stat().st_size > 0
