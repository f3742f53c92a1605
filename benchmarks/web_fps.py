"""Frames per second of the web page (`make web`): runs' `.onnx` in headless Chromium, webcam at 640×360.

    python -m benchmarks.web_fps [--runs runs/width8 runs/width16 ...] [--seconds 5] [--warmup 2]
        [--min_frames 3] [--repeat 1] [--max_side 320|512] [--out FILE]

Each run's page is built with the real builder (pipeline/tools/web.py) and opened in the system's
Chromium (/usr/bin/chromium, headless, no GPU) on the wasm backend, with Chromium's fake camera, which
the page asks for 640×360. The page's own webcam loop runs (camera frame → canvas → model → canvas);
after `--warmup` frames, the frames finished over at least `--seconds` (and at least `--min_frames`)
give frames/s (`--max_side 320`: the page's control, the frames scaled to 320×180 first). Each page
is measured served with cross-origin isolation (wasm threads: one per core) and without (one thread). Prints a table, writes JSON (default benchmarks/results-web-fps-<machine>.json).
Runs default to runs/width8, width16, width32, and starter when it is exported; a run without
export/generator.onnx is an error that names the export to run. docs/web.md comes from this command,
and its screenshot from `--screenshot FILE` (the first run's page, a scikit-image photo uploaded). The
`web` section of `make bench` runs it on the benchmark's preset model (`bench_web`).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, machine_slug, run_worker
from pipeline.tools.web import WebBuildError, build, start

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic", "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream"]
DEFAULT_RUNS = ("runs/width8", "runs/width16", "runs/width32", "runs/starter")


def measure(browser: Any, url: str, seconds: float, warmup: int, min_frames: int,
            max_side: int | None = None, own_model: bool = False) -> dict[str, Any]:
    """The page's webcam loop at `url`: frames/s after `warmup` frames, over ≥ `seconds` and ≥ `min_frames`;
    `max_side`: the page's "max side" control (320 or 512: the camera frame scaled down first); `own_model`:
    the run's own model on the webcam even where the page has its fast twin (`?webcam=full`)."""
    page = browser.new_page()
    try:
        page.goto(url + "?backend=wasm" + ("&webcam=full" if own_model else ""))
        info = page.evaluate("instyle.ready()")
        if max_side:
            page.select_option("#max-side", str(max_side))
        page.click("#webcam")
        page.wait_for_function(f"instyle.counter().frames >= {warmup}", timeout=600_000)
        first = page.evaluate("instyle.counter()")
        deadline = first["last"] + 1000 * seconds
        page.wait_for_function(f"instyle.counter().last >= {deadline} && instyle.counter().frames >= "
                               f"{first['frames'] + min_frames}", timeout=600_000, polling=100)
        last = page.evaluate("instyle.counter()")
        # whole frames: those finished after the first reading's latest frame, up to the last reading's latest
        frames, span = last["frames"] - first["frames"], (last["last"] - first["last"]) / 1000
        return {"backend": info["backend"], "threads": info["threads"], "isolated": info["crossOriginIsolated"],
                "webcam_model": info.get("webcam") or "own",
                "frame": f"{last['width']}x{last['height']}", "frames": frames, "seconds": round(span, 2),
                "fps": round(frames / span, 2), "ms_per_frame": round(1000 * span / frames, 1)}
    finally:
        page.close()


def screenshot(browser: Any, url: str, path: Path, photo: str, style: str, strength: float,
               webcam_seconds: float = 0.0) -> None:
    """The page stylizing scikit-image's `photo` with `style` ('a:0.6,b:0.4' weights by name) at `strength`,
    saved as a palette PNG (docs/images/web_page.png); with `webcam_seconds` > 0, instead the (fake) webcam
    after that long, its frames/s readout in view (docs/images/web_webcam.png)."""
    from PIL import Image

    from pipeline.common.image_sources import skimage_photo

    page = browser.new_page(viewport={"width": 1100, "height": 560})
    try:
        page.goto(url + "?backend=wasm")
        info = page.evaluate("instyle.ready()")
        for name, _, weight in (part.partition(":") for part in style.split(",") if part):
            page.fill(f"#mix input[data-style='{info['styles'].index(name)}']", str(round(100 * float(weight or 1))))
        if info["strength"]:
            page.fill("#strength", str(strength))
        if webcam_seconds > 0:
            page.click("#webcam")
            page.wait_for_function("instyle.counter().frames >= 3", timeout=600_000)
            page.wait_for_timeout(1000 * webcam_seconds)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                Image.fromarray(skimage_photo(photo)).save(Path(tmp) / f"{photo}.png")
                page.set_input_files("#photo", str(Path(tmp) / f"{photo}.png"))
                page.evaluate("instyle.settled()")
        page.evaluate("document.activeElement.blur()")  # no focus ring on the last slider set
        shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        # A 256-colour palette, dithered: a third of the plain PNG's bytes, for the docs folder
        shot.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    finally:
        page.close()


def bench_web(run: Path, work: Path, quick: bool) -> dict[str, Any]:
    """The `web` section of `make bench`: this command on the benchmark's preset model, in a fresh process;
    its results file, or {"error": ...} (no Chromium, no `web/node_modules`: `make web` installs them)."""
    out = work / "web-fps.json"
    res = run_worker("benchmarks.web_fps", ["--runs", str(run), "--seconds", "2" if quick else "5", "--out", str(out)])
    return res if "error" in res else json.loads(out.read_text())


def table(rows: list[dict[str, Any]]) -> str:
    twins = any(r.get("webcam_model", "own") != "own" for r in rows)  # the column only where a page has a twin
    lines = ["| run |" + (" webcam model |" if twins else "") + " width | styles | wasm threads | frame | "
             "frames/s (median) | best | ms/frame (median) |", "|---" * (9 if twins else 8) + "|"]
    for r in rows:
        threads = f"{r['threads']} ({'isolated' if r['isolated'] else 'not isolated'})"
        twin = f" {r.get('webcam_model', 'own')} |" if twins else ""
        lines.append(f"| {r['run']} |{twin} {r['width']} | {r['styles']} | {threads} | {r['frame'].replace('x', '×')} | "
                     f"{r['fps']:.1f} | {max(r['fps_each']):.1f} | {r['ms_per_frame']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", help="run folders exported with onnx (default: "
                   f"{', '.join(DEFAULT_RUNS)}, starter when it is exported)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=int, default=2, help="frames before the measurement starts")
    p.add_argument("--min_frames", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1, help="measurements per page and isolation mode; the median is reported")
    p.add_argument("--max_side", type=int, choices=(320, 512), help="the page's max side: frames scaled down to it")
    p.add_argument("--own_model", action="store_true", help="each run's own model on the webcam, also where its page "
                   "has the run's fast twin (RUN-fast) for it")
    p.add_argument("--out", type=Path)
    p.add_argument("--screenshot", type=Path, help="instead: a screenshot of the first run's page stylizing --photo")
    p.add_argument("--photo", default="chelsea", help="--screenshot: a scikit-image photo")
    p.add_argument("--style", default="", help="--screenshot: weights by style name, 'a:0.6,b:0.4'")
    p.add_argument("--strength", type=float, default=1.0, help="--screenshot: the strength")
    p.add_argument("--webcam_seconds", type=float, default=0.0,
                   help="--screenshot: the webcam running this long instead of --photo (its frames/s readout in view)")
    args = p.parse_args(argv)
    runs = args.runs or [Path(r) for r in DEFAULT_RUNS if r != "runs/starter" or Path(r, "export").exists()]
    from playwright.sync_api import sync_playwright

    machine = machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        try:
            pages = {run: build(run, Path(tmp) / run.name) for run in runs}
        except WebBuildError as e:
            p.error(str(e))
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        if args.screenshot:
            httpd, url = start(pages[runs[0]])
            try:
                screenshot(browser, url, args.screenshot, args.photo, args.style, args.strength, args.webcam_seconds)
            finally:
                httpd.shutdown()
                httpd.server_close()
            print(f"→ {args.screenshot}")
            return 0
        for run, folder in pages.items():
            meta = json.loads((folder / "metadata.json").read_text())
            for isolated in (True, False):
                httpd, url = start(folder, isolated=isolated)
                try:
                    load = os.getloadavg()[0]
                    # each repeat a fresh page; the median repeat is the row (a busy neighbour hits one of them)
                    tries = sorted((measure(browser, url, args.seconds, args.warmup, args.min_frames, args.max_side,
                                            args.own_model)
                                    for _ in range(args.repeat)), key=lambda t: t["fps"])
                    row = {"run": run.name, "width": (meta.get("generator_kwargs") or {}).get("width"),
                           "styles": len(meta.get("styles") or [None]), "load_before": round(load, 2),
                           **tries[len(tries) // 2], "fps_each": [t["fps"] for t in tries]}
                finally:
                    httpd.shutdown()
                    httpd.server_close()
                print(json.dumps(row), flush=True)
                rows.append(row)
        chromium = browser.version
        browser.close()
    result = {"machine": {**machine, "chromium": chromium,
                          "onnxruntime_web": json.loads((Path(__file__).resolve().parents[1] / "web" / "package.json")
                                                        .read_text())["dependencies"]["onnxruntime-web"]},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": vars(args) | {
                  "runs": [str(r) for r in runs], "out": None}, "rows": rows}
    print(table(rows))
    print(f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs; Chromium {chromium}, headless, no GPU")
    out = args.out or Path(__file__).resolve().parent / f"results-web-fps-{machine_slug(machine)}.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
