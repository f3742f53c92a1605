"""Video mode (pipeline.tools.video): timing, odd sizes, rotation and audio kept; every frame the image
CLI's output on that frame; animations, frame folders; bad files refused with nothing overwritten.

Clips are made here with PyAV (the `video` extra), tiny: 12 frames of 65×37 at 10 fps."""
from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av  # the `video` extra, part of `make install`: missing, these tests fail rather than skip
import numpy as np
import pytest
from PIL import Image

from pipeline.__main__ import main as cli
from pipeline.export.exporter import export_run
from pipeline.serve.model_io import load_model
from pipeline.tools.stylize import stylize_bytes
from pipeline.tools.video import stylize_video
from serving_helpers import decode_pil, encode_pil, make_checkpoint
from video_helpers import make_clip, pattern


PARAMS = {"style": "b", "strength": "0.6"}


@pytest.fixture(scope="module")
def duo(tmp_path_factory) -> Path:
    """A tiny 2-style checkpoint with the strength control."""
    run = tmp_path_factory.mktemp("runs") / "duo"
    make_checkpoint(run, styles=["a", "b"], strength=True, width=8, n_residual=1)
    return run


@pytest.fixture(scope="module")
def model_path(duo) -> Path:
    """Its served form (.pt2), exported once for the module's integration tests."""
    return export_run(duo, formats=("pt2",))["pt2"]


@pytest.fixture(scope="module")
def model(model_path):
    return load_model(model_path)[0]


@pytest.fixture(scope="module")
def eager_model(duo):
    """The checkpoint's generator as `stylize` loads it: what a frame gives does not depend on the form
    (test_export.py compares the forms), so the unit tier needs no export."""
    return load_model(duo / "checkpoints" / "last.ckpt")[0]


def decoded_frames(path: Path) -> list:
    with av.open(str(path)) as c:
        return list(c.decode(c.streams.video[0]))


def audio_packets(path: Path) -> list[tuple[bytes, float]]:
    """(bytes, duration in s) of every audio packet, in order."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return [(bytes(p), float(p.duration * p.time_base)) for p in c.demux(s) if p.dts is not None]


@pytest.mark.parametrize("suffix, size, audio, pix_fmt", [(".mp4", (65, 37), "aac", "yuv444p"),
                                                           (".mkv", (64, 36), "libopus", "yuv420p")])
@pytest.mark.slow
def test_round_trip_keeps_timing_size_rotation_and_copies_audio(model, tmp_path, suffix, size, audio, pix_fmt):
    src = make_clip(tmp_path / f"clip{suffix}", *size, audio=audio)
    dst = tmp_path / f"out{suffix}"
    assert stylize_video(model, src, dst, params=PARAMS, batch=4, progress=False) == 12
    with av.open(str(dst)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.codec_context.pix_fmt) == ("h264", pix_fmt)
        assert v.average_rate == Fraction(10) and [s.type for s in c.streams] == ["video", "audio"]
    ins, outs = decoded_frames(src), decoded_frames(dst)
    assert len(outs) == 12 and {(f.width, f.height) for f in outs} == {size}
    assert [f.rotation for f in outs] == [90] * 12 == [f.rotation for f in ins]
    assert [round(float(f.time), 6) for f in outs] == [round(float(f.time), 6) for f in ins] == [k / 10 for k in range(12)]
    src_audio, dst_audio = audio_packets(src), audio_packets(dst)
    assert len(dst_audio) == len(src_audio) > 10
    assert dst_audio == src_audio  # copied: the same bytes and durations, nothing re-encoded
    assert not [p.name for p in tmp_path.iterdir() if ".partial" in p.name]


@pytest.mark.parametrize("params", [PARAMS, {"style": "a:0.3,b:0.7", "preserve_color": "true", "max_side": "40"}])
def test_every_frame_is_the_image_clis_output_on_that_frame(eager_model, tmp_path, params, auto_precision):
    """At `precision: auto`, what users run (bf16 convolutions on a CPU with native bf16)."""
    model = eager_model
    src = make_clip(tmp_path / "clip.mp4")
    frames = [f.to_ndarray(format="rgb24") for f in decoded_frames(src)]  # decoded here, independently
    expected = [stylize_bytes(model, encode_pil(rgb), {**params, "format": "png"})[0] for rgb in frames]
    assert stylize_video(model, src, tmp_path / "frames", params=params, batch=1, progress=False) == 12
    got = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in got] == [f"frame_{k:06d}.png" for k in range(12)]
    assert [p.read_bytes() for p in got] == expected  # batch 1: byte for byte
    stylize_video(model, src, tmp_path / "frames4", params=params, batch=4, progress=False)
    rounding = 1 if auto_precision == "fp32" else 2  # a batch's kernels round differently; bf16 rounds coarser
    for k, p in enumerate(sorted((tmp_path / "frames4").iterdir())):  # batch 4: float rounding at most
        diff = np.abs(np.asarray(decode_pil(p.read_bytes()), int) - np.asarray(decode_pil(expected[k]), int))
        assert diff.max() <= rounding, k
    # The H.264 file carries the same frames, up to the codec's loss (CRF 18, 4:4:4 at this odd size).
    stylize_video(model, src, tmp_path / "out.mp4", params=params, batch=1, progress=False)
    video = [f.to_ndarray(format="rgb24").astype(int) for f in decoded_frames(tmp_path / "out.mp4")]
    lossless = [np.asarray(decode_pil(b), int) for b in expected]
    assert video[0].shape == lossless[0].shape
    # The untrained model's output is busy texture, H.264's worst case: a few levels of mean error, no
    # colour shift (a wrong YUV matrix or range moves the channel means by several levels), and frame k
    # far closer to image k than to image k-1.
    codec_error = np.mean([np.abs(v - e).mean() for v, e in zip(video, lossless)])
    bias = np.abs(np.mean([(v - e).mean(axis=(0, 1)) for v, e in zip(video, lossless)], axis=0)).max()
    next_frame = np.mean([np.abs(v - e).mean() for v, e in zip(video[1:], lossless[:-1])])
    assert codec_error < 6.0 and bias < 1.0 and next_frame > 3 * codec_error, (codec_error, bias, next_frame)


@pytest.mark.slow
def test_frame_folders_in_and_out(model, model_path, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    files = {"f1.png": encode_pil(pattern(1, 37, 65)), "f2.jpg": encode_pil(pattern(2, 37, 65), "JPEG", quality=90),
             "f10.webp": encode_pil(pattern(3, 37, 65), "WEBP", lossless=True), "f3.bmp": encode_pil(pattern(4, 37, 65), "BMP")}
    for name, data in files.items():
        (src / name).write_bytes(data)
    assert stylize_video(model, src, tmp_path / "out", params=PARAMS, batch=1, progress=False) == 4
    fmt = {"f1.png": "png", "f2.jpg": "jpeg", "f10.webp": "webp", "f3.png": "png"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(fmt)
    for name, f in fmt.items():
        source = files.get(name) or files["f3.bmp"]
        assert (tmp_path / "out" / name).read_bytes() == stylize_bytes(model, source, {**PARAMS, "format": f})[0], name
    # The same folder into a video: natural order (f10 last), --fps as the rate, through the CLI.
    assert cli(["stylize", "--model", str(model_path), "--style", "b", "--fps", "12.5", "--batch", "3",
                str(src), str(tmp_path / "film.mkv")]) == 0
    with av.open(str(tmp_path / "film.mkv")) as c:
        assert c.streams.video[0].average_rate == Fraction(25, 2)
    assert [(f.width, f.height) for f in decoded_frames(tmp_path / "film.mkv")] == [(65, 37)] * 4


@pytest.mark.slow
@pytest.mark.parametrize("fmt, loop", [("GIF", 2), ("GIF", None), ("WEBP", 0)])
def test_animation_keeps_frame_count_durations_and_loop(model, model_path, tmp_path, fmt, loop):
    durations = [50, 80, 120, 60, 200]
    frames = [Image.fromarray(pattern(k, 30, 41)) for k in range(5)]
    suffix = ".gif" if fmt == "GIF" else ".webp"
    src, dst = tmp_path / f"anim{suffix}", tmp_path / f"out{suffix}"
    kwargs = {"loop": loop} if loop is not None else {}
    frames[0].save(src, format=fmt, save_all=True, append_images=frames[1:], duration=durations, **kwargs)
    assert cli(["stylize", "--model", str(model_path), "--style", "a", str(src), str(dst)]) == 0
    with Image.open(dst) as im:
        assert im.format == fmt and im.n_frames == 5 and im.size == (41, 30)
        assert im.info.get("loop") == loop
        got = []
        for k in range(5):
            im.seek(k)
            im.load()  # Pillow's WebP reader sets a frame's duration when it decodes it
            got.append(im.info["duration"])
    assert got == durations


@pytest.mark.slow
def test_bad_inputs_are_refused_and_existing_output_untouched(model, model_path, tmp_path, capsys):
    good = make_clip(tmp_path / "good.mp4")
    data = good.read_bytes()
    # Fixed bytes: about 1 in 300 draws of os.urandom probes as a subtitle
    # stream (a different, equally clear refusal), which made this test flaky.
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: gone
    mkv = make_clip(tmp_path / "good.mkv", audio="libopus").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(mkv[: len(mkv) * 2 // 3])  # header intact, clusters cut off
    audio_only = av.open(str(tmp_path / "sound.mp4"), "w")
    a = audio_only.add_stream("aac", rate=16000)
    a.layout = "mono"
    for s in range(0, 16000, 1024):
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 16000, s
        audio_only.mux(a.encode(af))
    audio_only.mux(a.encode())
    audio_only.close()
    dst = tmp_path / "keep.mp4"
    dst.write_bytes(b"an earlier result")
    cases = {"random.mp4": "not a readable video", "cut.mp4": "moov atom not found",
             "cut.mkv": "truncated", "sound.mp4": "no video stream"}
    for name, problem in cases.items():
        with pytest.raises(ValueError, match=problem) as e:
            stylize_video(model, tmp_path / name, dst, params={}, progress=False)
        assert name in str(e.value)
        assert cli(["stylize", "--model", str(model_path), str(tmp_path / name), str(dst)]) == 1
        assert name in capsys.readouterr().err
        assert dst.read_bytes() == b"an earlier result"
    with pytest.raises(ValueError, match="opus only supported in MP4"):  # a codec the container refuses
        stylize_video(model, tmp_path / "good.mkv", tmp_path / "out.mov", params={}, progress=False)
    assert not (tmp_path / "out.mov").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".partial" in p.name]


@pytest.mark.slow
def test_cli_usage_errors(model_path, tmp_path, capsys):
    src = make_clip(tmp_path / "c.mp4", audio=None, rotation=None)
    base = ["stylize", "--model", str(model_path)]
    assert cli([*base, str(src), str(tmp_path / "o.png")]) == 2
    assert "output must be" in capsys.readouterr().err
    assert cli([*base, "--format", "png", str(src), str(tmp_path / "o.mp4")]) == 2
    assert cli([*base, "--batch", "0", str(src), str(tmp_path / "o.mp4")]) == 2
    assert not (tmp_path / "o.mp4").exists()
    assert cli([*base, "--batch", "5", str(src), str(tmp_path / "o.mp4")]) == 0
    assert len(decoded_frames(tmp_path / "o.mp4")) == 12
    # A one-frame GIF is an image, as before: the image path writes a PNG.
    still = tmp_path / "still.gif"
    still.write_bytes(encode_pil(pattern(0, 9, 11), "GIF"))
    assert cli([*base, str(still), str(tmp_path / "still.png")]) == 0
    assert decode_pil((tmp_path / "still.png").read_bytes()).size == (11, 9)


@pytest.mark.slow
def test_serving_package_imports_without_pyav():
    """The serving package is bundled into every .mar, whose workers have no PyAV: importing the video
    modules must not import it (it is imported when a video is read or written)."""
    code = ("import sys, pipeline.tools.video, pipeline.tools.stylize; "
            "assert 'av' not in sys.modules, 'av imported'; print('OK')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]
