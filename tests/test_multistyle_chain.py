"""The chain of real artifacts, no hand-built checkpoint: one model, two styles, a strength control.
`make train STYLE=a,b` (real VGG) → both styles' losses fall and their outputs differ → `make export`
(pt, pt2, onnx each equal to eager for every style, a mix and a strength) → `make archive` → real
TorchServe: the default answer is the offline `python -m pipeline stylize` command's file byte for byte,
per-request X-Style / mix / X-Strength equal the offline path, bad controls are 400 JSON listing the
styles, the describe API names them, and one batch holds requests for different styles and sizes."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.export.archive import archive_run
from pipeline.ops.torchserve_local import TORCHSERVE, LocalTorchServe
from pipeline.serve.controls import Conditioning, call_model
from pipeline.serve.model_io import load_model
from pipeline.tools.stylize import stylize_bytes
from data_helpers import write_case
from serving_helpers import decode_pil, encode_pil, rng_image
from train_helpers import TINY

STYLES = ("astronaut", "coffee")  # colour images scikit-image ships, far from a fresh generator's grey output
NAME = "-".join(STYLES)  # the run name `make train` gives several styles, also the served model's name

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow]


def make(target: str, cwd: Path, *variables: str) -> str:
    res = subprocess.run(["make", "-f", str(ROOT / "Makefile"), target, f"PY={sys.executable}", *variables],
                         cwd=cwd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"make {target}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vgg_weights) -> Path:
    """runs/astronaut-coffee trained by `make train` with the strength control, exported by `make export`."""
    work = tmp_path_factory.mktemp("work")
    data = write_case(tmp_path_factory.mktemp("shards"), 2)
    args = TINY[2:] + ["--data.steps_per_epoch=24", "--trainer.max_steps=48", "--model.strength_control=true"]
    make("train", work, "STYLE=" + ",".join(f"skimage:{s}" for s in STYLES), f"DATA={data}", "ARGS=" + " ".join(args))
    assert (work / "runs" / NAME / "checkpoints" / "last.ckpt").is_file()
    make("export", work, f"NAME={NAME}")
    (work / "runs" / NAME / "test-shards").symlink_to(data)
    return work / "runs" / NAME


def val_photos(run: Path) -> torch.Tensor:
    """The run's fixed validation photos (what val/* logs)."""
    from pipeline.data.datamodule import ContentDataModule

    dm = ContentDataModule(str(run / "test-shards"), image_size=64, val_size=64, batch_size=2, num_workers=0)
    dm.setup("fit")
    return torch.cat([b.images for b in dm.val_dataloader()])


def test_both_styles_losses_fall_and_outputs_differ(trained):
    from pipeline.train.module import StyleTransferModule

    ckpt = trained / "checkpoints" / "last.ckpt"
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    torch.manual_seed(0)
    fresh = StyleTransferModule(**{k: v for k, v in hp.items() if not k.startswith("_")}).eval()
    after = StyleTransferModule.load_from_checkpoint(ckpt, weights_only=True).eval()
    assert after.style_names == list(STYLES) and after.generator.n_styles == 2 and after.generator.has_strength
    x = val_photos(trained)
    with torch.no_grad():
        for k, name in enumerate(STYLES):
            idx = torch.full((len(x),), k)
            before_k, after_k = fresh._terms(x, idx), after._terms(x, idx)
            for term in ("style", "total"):
                assert after_k[term].item() < 0.9 * before_k[term].item(), (name, term, before_k, after_k)
        outs = [after(x, torch.full((len(x),), k)) for k in range(2)]
        # each style's output is closer to its own style than the other style's output is
        for k in range(2):
            own, other = (after.loss(outs[j], x, torch.full((len(x),), k))["style"].item() for j in (k, 1 - k))
            assert own < other, (STYLES[k], own, other)
    assert (outs[0] - outs[1]).abs().mean().item() > 1 / 255


def test_exports_equal_eager_for_every_style_a_mix_and_a_strength(trained, capsys):
    eager, meta = load_model(trained / "checkpoints" / "last.ckpt")
    assert meta["styles"] == list(STYLES) and meta["strength_control"] is True
    conds = [Conditioning((1.0, 0.0), 1.0), Conditioning((0.0, 1.0), 1.0), Conditioning((0.5, 0.5), 1.0),
             Conditioning((1.0, 0.0), 0.3)]
    x = torch.rand(1, 3, 45, 61).expand(len(conds), -1, -1, -1).contiguous()
    with torch.inference_mode():
        want = call_model(eager, x, conds, eager.instyle_controls)
    for fmt in ("pt", "pt2", "onnx"):
        model, fmeta = load_model(trained / "export" / f"generator.{fmt}")
        assert model.instyle_controls == eager.instyle_controls and fmeta["styles"] == list(STYLES)
        with torch.inference_mode():
            got = call_model(model, x, conds, model.instyle_controls)
        diffs = [(got[i] - want[i]).abs().max().item() for i in range(len(conds))]
        with capsys.disabled():
            print(f"\n{fmt}: max |exported − eager| per (style a, style b, 50/50 mix, strength 0.3): "
                  + ", ".join(f"{d:.2e}" for d in diffs))
        assert max(diffs) < 1e-4, (fmt, diffs)
    assert (want[0] - want[3]).abs().mean() > 1e-3  # strength changes the image


@pytest.mark.skipif(shutil.which("java") is None or not TORCHSERVE.exists(), reason="needs Java and torchserve")
def test_served_styles_options_errors_describe_and_mixed_batches(trained, tmp_path, auto_precision):
    """The chain as users run it, at `precision: auto` (bf16 convolutions on a CPU with native bf16)."""
    make("archive", trained.parents[1], f"NAME={NAME}")
    store = trained.parents[1] / "model_store"
    archive_run(trained, store, name="duobatch", batch_size=4, max_batch_delay_ms=2000)
    model, _ = load_model(trained / "export" / "generator.pt2")

    def offline(data: bytes, **params: str) -> np.ndarray:
        return np.asarray(decode_pil(stylize_bytes(model, data, params)[0]))

    photo = encode_pil(rng_image(45, 61, seed=3))
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(encode_pil(rng_image(45, 61, seed=4), "JPEG", quality=92))
    cli = subprocess.run([sys.executable, "-m", "pipeline", "stylize", "--model", str(trained / "export" / "generator.pt2"),
                          str(jpeg), str(tmp_path / "offline.png")], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "step 48" in cli.stdout  # the trained checkpoint's metadata travelled into the export
    assert f"precision {auto_precision} (auto)" in cli.stdout
    with LocalTorchServe(tmp_path / "server", store) as server:
        server.wait_ready([NAME, "duobatch"])
        status, ctype, body = server.request("POST", f"/predictions/{NAME}", jpeg.read_bytes(), {"Content-Type": "image/jpeg"})
        assert (status, ctype) == (200, "image/png") and body == (tmp_path / "offline.png").read_bytes()

        def post(data: bytes, headers: dict[str, str], model_name: str = NAME) -> tuple[int, str, bytes]:
            return server.request("POST", f"/predictions/{model_name}", data, {"Content-Type": "image/png", **headers})

        results = {}
        for label, headers, params in [
            ("default", {}, {}),
            ("second", {"X-Style": "coffee"}, {"style": "coffee"}),
            ("mix", {"X-Style": "astronaut:0.5,coffee:0.5"}, {"style": "astronaut:0.5,coffee:0.5"}),
            ("strength", {"X-Strength": "0.3"}, {"strength": "0.3"}),
            ("colour", {"X-Style": "coffee", "X-Preserve-Color": "true"}, {"style": "coffee", "preserve_color": "true"}),
        ]:
            status, ctype, body = post(photo, headers)
            assert (status, ctype) == (200, "image/png"), (label, body[:300])
            results[label] = np.asarray(decode_pil(body))
            assert np.array_equal(results[label], offline(photo, **params)), label
        assert np.array_equal(results["default"], offline(photo, style="astronaut"))  # no X-Style: the first style
        for a, b in (("default", "second"), ("default", "mix"), ("default", "strength"), ("second", "colour")):
            assert np.abs(results[a].astype(int) - results[b].astype(int)).mean() > 0.5, (a, b)

        for headers, message in [({"X-Style": "mona_lisa"}, "unknown style 'mona_lisa'"),
                                 ({"X-Style": "coffee:-1"}, "≥ 0"), ({"X-Style": "coffee:x"}, "not a number"),
                                 ({"X-Strength": "1.5"}, "outside [0, 1]"), ({"X-Strength": "lots"}, "not a number")]:
            status, ctype, body = post(photo, headers)
            err = json.loads(body)
            assert status == 400 and ctype.startswith("application/json") and message in err["error"], (headers, body)
            assert err["styles"] == list(STYLES)

        status, _, body = server.request("GET", f"/models/{NAME}?customized=true", port=server.management,
                                         token="management")
        assert status == 200, body[:300]
        custom = json.loads(body)[0]["customizedMetadata"]
        described = json.loads(custom) if isinstance(custom, str) else custom
        assert described["styles"] == list(STYLES) and described["strength_control"] is True
        assert described["hyper_parameters"]["strength_control"] is True and "style" in described["options"]
        assert described["precision"] == f"{auto_precision} (auto)"  # what the worker chose on this CPU
        # the archive's two CPU workers share the cores (archive.CPU_WORKERS, limits.cpu_threads)
        assert described["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)

        # one TorchServe batch of 4: two sizes × different styles and strengths
        jobs = [(rng_image(37, 53, seed=20), {"X-Style": "coffee"}), (rng_image(64, 48, seed=21), {}),
                (rng_image(37, 53, seed=22), {"X-Style": "astronaut:0.2,coffee:0.8", "X-Strength": "0.5"}),
                (rng_image(64, 48, seed=23), {"X-Strength": "0.0"})]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda j: post(encode_pil(j[0]), j[1], "duobatch"), jobs))
        for (img, headers), (status, _, body) in zip(jobs, answers):
            assert status == 200, body[:300]
            params = {k[2:].lower(): v for k, v in headers.items()}
            want = offline(encode_pil(img), **params)
            assert np.abs(np.asarray(decode_pil(body)).astype(int) - want.astype(int)).max() <= 1, headers
        status, _, metrics = server.request("GET", "/metrics", port=server.metrics, token=None)
        gauges = dict(re.findall(r'^BatchSize\{ModelName="(\w+)".*\} ([0-9.]+)$', metrics.decode(), re.M))
        assert gauges.get("duobatch") == "4.0", gauges
