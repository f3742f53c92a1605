"""`python -m pipeline flicker-report`: how much trained models flicker on clips whose motion is
known, with their style and content losses beside, and a side-by-side animation.

Clips (pipeline/quality/stability.py): per validation photo a virtual camera pans and zooms, with
sensor noise and JPEG per frame (`synthetic`); and a real photo (scikit-image's public-domain
`astronaut`) filmed by a handheld-like pan, then really encoded as H.264 (libx264, yuv420p, CRF 23)
and decoded with PyAV (`h264`): a codec's inter-frame artifacts instead of JPEG's. Each run is
scored by the warping error of its stylized clip next to the input clip's (the floor).

    python -m pipeline flicker-report --runs '[runs/plain,runs/stable]' --content ../shared/assets/content/val \\
        --out reports/flicker --gif docs/images/flicker.gif
"""
from __future__ import annotations

import io
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipeline.quality.evaluate import list_photos
from pipeline.quality.figures import grid
from pipeline.quality.gatys import build_loss
from pipeline.quality.stability import FLICKER_JPEG_QUALITY, FLICKER_NOISE_STD, clip_warping_error, synthetic_clip
from pipeline.quality.style_report import exported, losses, one_hot, write_report
from pipeline.serve.controls import call_model
from pipeline.common.image_codec import resize, resize_short, to_uint8
from pipeline.common.image_sources import load_image, load_image_file, load_style
from pipeline.serve.model_io import load_model
from pipeline.train.styles import style_specs

FRAMES, SIZE = 16, (180, 240)  # (h, w) of the clips: longer and larger than `evaluate`'s quick check
NOISE, JPEG = FLICKER_NOISE_STD, FLICKER_JPEG_QUALITY  # per-frame noise and JPEG: the same as `evaluate`
REAL_PHOTO, REAL_CRF = "skimage:astronaut", 23


def h264_round_trip(frames: torch.Tensor, crf: int = REAL_CRF) -> torch.Tensor:
    """Frames (T, 3, h, w) in [0, 1] encoded as H.264 (yuv420p) in memory and decoded back."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = frames.shape[3], frames.shape[2], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(to_uint8(f), format="rgb24")))
        out.mux(stream.encode())
    buf.seek(0)
    with av.open(buf) as src:
        decoded = [torch.from_numpy(fr.to_ndarray(format="rgb24").copy()).permute(2, 0, 1).float() / 255
                   for fr in src.decode(video=0)]
    if len(decoded) != len(frames):
        raise RuntimeError(f"H.264 round trip gave {len(decoded)} frames for {len(frames)}")
    return torch.stack(decoded)


def clips(photos: list[Path]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name → (frames, true motion): a pan and a zoom per photo, and the H.264 clip of a real photo."""
    made = {}
    for i, path in enumerate(photos):
        photo = load_image_file(path)
        for motion in ("pan", "zoom"):
            made[f"{path.stem}-{motion}"] = synthetic_clip(photo, FRAMES, SIZE, motion, noise_std=NOISE,
                                                           jpeg_quality=JPEG, seed=i)
    frames, motion = synthetic_clip(load_image(REAL_PHOTO), FRAMES, SIZE, "pan", pan=(3.0, 1.0))
    made["astronaut-h264"] = (h264_round_trip(frames), motion)
    return made


def stylized(model: Any, frames: torch.Tensor) -> torch.Tensor:
    """Every frame through the model (its first style, full strength), four at a time."""
    with torch.inference_mode():
        return torch.cat([call_model(model, frames[i:i + 4], None, model.instyle_controls).float().clamp(0, 1)
                          for i in range(0, len(frames), 4)])


def build_report(runs: list[Path], content: Path, limit: int, size: int) -> tuple[dict[str, Any], dict]:
    photos = list_photos(content, limit)
    made = clips(photos)
    val = [resize_short(load_image_file(p)[None], size) for p in photos]
    report: dict[str, Any] = {"clips": {k: {"input": clip_warping_error(*v)} for k, v in made.items()}, "runs": [],
                              "settings": {"frames": FRAMES, "size": SIZE, "noise": NOISE, "jpeg": JPEG,
                                           "real": f"{REAL_PHOTO} pan, H.264 CRF {REAL_CRF}"}}
    outputs = {}
    for run in runs:
        model, meta = load_model(exported(run))
        hp = meta.get("hyper_parameters") or {}
        loss = build_loss([load_style(style_specs(hp["style_image"])[0], hp.get("style_size", 256))], hp)
        outputs[run.name] = {k: stylized(model, frames) for k, (frames, _) in made.items()}
        errors = {k: clip_warping_error(outputs[run.name][k], motion) for k, (_, motion) in made.items()}
        synthetic = [e for k, e in errors.items() if not k.endswith("h264")]
        report["runs"].append({"run": run.name, "steps": meta.get("global_step"),
                               "stability_weight": hp.get("stability_weight", 0.0), "errors": errors,
                               "synthetic_mean": statistics.fmean(synthetic), "h264": errors["astronaut-h264"],
                               "losses": losses(model, loss, val, 0, one_hot(0, len(model.instyle_controls.styles)))})
    floor = [v["input"] for k, v in report["clips"].items() if not k.endswith("h264")]
    report["floor"] = {"synthetic_mean": statistics.fmean(floor), "h264": report["clips"]["astronaut-h264"]["input"]}
    return report, {"made": made, "outputs": outputs}


def markdown(r: dict[str, Any]) -> str:
    base = r["runs"][0]
    lines = ["| run | stability weight | warping error, synthetic clips | vs first | warping error, H.264 clip | vs first "
             "| style | content | total |", "|---|---|---|---|---|---|---|---|---|",
             f"| input clips (floor) | | {r['floor']['synthetic_mean']:.4f} | | {r['floor']['h264']:.4f} | | | | |"]
    for x in r["runs"]:
        lo = x["losses"]
        lines.append(f"| {x['run']} | {x['stability_weight']:g} | {x['synthetic_mean']:.4f} | "
                     f"{x['synthetic_mean'] / base['synthetic_mean']:.2f}× | {x['h264']:.4f} | {x['h264'] / base['h264']:.2f}× | "
                     f"{lo['style']:.3f} | {lo['content']:.3f} | {lo['total']:.3f} |")
    s = r["settings"]
    return (f"Clips: {s['frames']} frames of {s['size'][1]}×{s['size'][0]}; synthetic: pan and zoom over each validation "
            f"photo, noise σ {s['noise']}, JPEG {s['jpeg']}; real: {s['real']}. Warping error: RMSE in [0, 1] "
            "between frame t warped by the true motion and frame t+1.\n\n" + "\n".join(lines) + "\n")


def animation(made: dict, outputs: dict, clip: str, path: Path, cell: int = 160) -> None:
    """The input clip beside every run's stylized clip, labelled: a looping GIF, or an MP4 (H.264)."""
    frames_in = made[clip][0]
    columns = [("input", frames_in), *[(name, outs[clip]) for name, outs in outputs.items()]]
    h = round(cell * frames_in.shape[2] / frames_in.shape[3])
    names = [name for name, _ in columns]
    images = [grid([[resize(frames[t].float(), (h, cell)) for _, frames in columns]], titles=names)
              for t in range(frames_in.shape[0])]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        frames = [im.convert("P", palette=Image.ADAPTIVE) for im in images]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0, optimize=True)
        return
    import av  # an H.264 MP4: a tenth of the GIF's size

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=12, options={"crf": "20"})
        stream.width, stream.height, stream.pix_fmt = images[0].width // 2 * 2, images[0].height // 2 * 2, "yuv420p"
        for im in images:
            frame = av.VideoFrame.from_image(im.crop((0, 0, stream.width, stream.height)))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def command(*, runs: list[Path], content: Path, out: Path, gif: Path | None = None, limit: int = 4, size: int = 256) -> int:
    """Warping error (flicker) of runs on synthetic and H.264 clips with known motion, with their losses.

    Args:
        runs: run directories (exported when needed); the first is the baseline of the ratios.
        content: folder of validation photos (clips are made from the first LIMIT, losses measured on them).
        out: report folder (report.md, metrics.json).
        gif: also write a side-by-side animation of the H.264 astronaut clip here (.gif, or .mp4: H.264).
        limit: photos used.
        size: short side of the photos for the losses, px.
    """
    try:
        report, data = build_report(runs, content, limit, size)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(out, report, markdown(report))
    if gif is not None:
        # the public-domain photo's clip: the validation photos may not be redistributable
        animation(data["made"], data["outputs"], "astronaut-h264", gif)
        print(f"wrote {gif}")
    return 0
