"""`make web NAME=<run>`: a run's exported `.onnx` generator as a static web page that stylizes photos and the webcam in the browser, with onnxruntime-web.

    python -m pipeline web --run runs/NAME [--out web/dist/NAME] [--serve true] [--port 8000]

The folder written (index.html, the page's modules, generator.onnx, metadata.json, and
onnxruntime-web's wasm and WebGPU files under ort/) works from any static server; `--serve true`
serves it on 127.0.0.1 with the cross-origin-isolation headers (COOP/COEP) that wasm threads need.
The page's sources are web/src/, onnxruntime-web is pinned in web/package-lock.json (`npm ci --prefix
web`). How to use it, the pixel tolerance against `stylize` and frames/s: docs/web.md.
"""
from __future__ import annotations

import functools
import json
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "web"
# The two onnxruntime-web builds the page loads, one at a time: the plain wasm one (half the download)
# and the WebGPU one (the asyncify wasm, which also has the wasm provider for fallback).
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
             "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
MODEL_FILES = ("generator.onnx", "metadata.json")
# A run's fast twin (`make distill`: runs/<name>-fast) stylizes the webcam when the page has one: its files
# under these names, and page.json, which tells the page.
WEBCAM_FILES = {"generator.onnx": "generator-fast.onnx", "metadata.json": "metadata-fast.json"}
PAGE_FILE = "page.json"
# What cross-origin isolation needs (SharedArrayBuffer, so wasm threads); the page loads nothing cross-origin.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


class WebBuildError(RuntimeError):
    """A page cannot be built: the message says what to run."""


def ort_dist(web: Path = WEB) -> Path:
    """onnxruntime-web's dist folder, checked to be the version web/package.json pins."""
    package = web / "node_modules" / "onnxruntime-web"
    pinned = json.loads((web / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    if not (package / "package.json").exists():
        raise WebBuildError(f"{package} is missing: run `npm ci --prefix {web}` (Node.js and npm; `make web` does it)")
    installed = json.loads((package / "package.json").read_text())["version"]
    if installed != pinned:
        raise WebBuildError(f"{package} is {installed}, web/package.json pins {pinned}: run `npm ci --prefix {web}`")
    missing = [f for f in ORT_FILES if not (package / "dist" / f).exists()]
    if missing:
        raise WebBuildError(f"{package}/dist lacks {', '.join(missing)}: run `npm ci --prefix {web}`")
    return package / "dist"


def model_files(run: Path) -> dict[str, Path]:
    """The run's exported generator.onnx and metadata.json (a clear error naming the export to run)."""
    export = run / "export"
    if not run.is_dir():
        raise WebBuildError(f"{run} is not a run folder (expected runs/NAME, with export/generator.onnx)")
    files = {name: export / name for name in MODEL_FILES}
    if not files["generator.onnx"].exists():
        formats = "--formats '[pt2,onnx]'"
        raise WebBuildError(f"{files['generator.onnx']} is missing: export the run with ONNX first, `make export "
                            f"NAME={run.name}` (all formats) or `python -m pipeline export --run {run} {formats}`")
    if not files["metadata.json"].exists():
        raise WebBuildError(f"{files['metadata.json']} is missing: re-export the run (`make export NAME={run.name}`)")
    return files


def webcam_twin(run: Path, webcam: Path | None) -> dict[str, Path] | None:
    """The files of the model that stylizes the webcam: `webcam` (a run folder), else the run's fast twin
    runs/<name>-fast when it has an ONNX export, else None (the run's own model). A clear error for a twin
    whose styles or strength control differ from the run's (the page's controls drive both)."""
    if webcam is None:
        twin = run.parent / f"{run.resolve().name}-fast"
        if not (twin / "export" / "generator.onnx").exists():
            return None
        webcam = twin
    files = model_files(Path(webcam))
    ours, theirs = (json.loads(model_files(run)["metadata.json"].read_text()),
                    json.loads(files["metadata.json"].read_text()))
    for key in ("styles", "strength_control"):
        if ours.get(key) != theirs.get(key):
            raise WebBuildError(f"the webcam model {webcam} has {key}={theirs.get(key)}, the run {run} {key}="
                                f"{ours.get(key)}: the page's controls drive both (distill it: `make distill NAME={run.name}`)")
    return files


def build(run: Path, out: Path | None = None, web: Path = WEB, webcam: Path | None = None) -> Path:
    """Write the static page for `run` into `out` (default web/dist/<run name>); returns `out`. The webcam
    runs `webcam_twin`'s model when there is one (page.json names it). Files a previous build wrote there
    are replaced; nothing else in `out` is touched."""
    run = Path(run)
    files = model_files(run)
    twin = webcam_twin(run, webcam)
    dist = ort_dist(web)
    out = Path(out) if out is not None else web / "dist" / run.resolve().name
    sources = sorted(p for p in (web / "src").iterdir() if p.is_file())
    (out / "ort").mkdir(parents=True, exist_ok=True)
    for path in sources:
        shutil.copyfile(path, out / path.name)
    for name, path in files.items():
        shutil.copyfile(path, out / name)
    for name, path in (twin or {}).items():
        shutil.copyfile(path, out / WEBCAM_FILES[name])
    page = {"webcam": {"model": WEBCAM_FILES["generator.onnx"], "metadata": WEBCAM_FILES["metadata.json"],
                       "name": twin["generator.onnx"].parents[1].name}} if twin else {}
    (out / PAGE_FILE).write_text(json.dumps(page))
    if not twin:  # a twin a previous build copied is not this page's
        for name in WEBCAM_FILES.values():
            (out / name).unlink(missing_ok=True)
    for name in ORT_FILES:
        target = out / "ort" / name
        source = dist / name
        # The 14-27 MB wasm files are copied only when they changed (rebuilds of a page are instant).
        if not target.exists() or target.stat().st_size != source.stat().st_size \
                or target.stat().st_mtime < source.stat().st_mtime:
            shutil.copy2(source, target)
    return out


class IsolatedHandler(SimpleHTTPRequestHandler):
    """Static files with the cross-origin-isolation headers (when `isolated`), never cached (a rebuilt
    page is seen at once), and quiet."""

    isolated = True

    def end_headers(self) -> None:
        if self.isolated:
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


def server(folder: Path, host: str = "127.0.0.1", port: int = 0, isolated: bool = True) -> ThreadingHTTPServer:
    """A static server of `folder` (not yet serving: call `serve_forever`, or `start` for a thread);
    port 0 picks a free one (`server.server_address`)."""
    handler = type("Handler", (IsolatedHandler,), {"isolated": isolated})
    return ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(folder)))


def start(folder: Path, isolated: bool = True) -> tuple[ThreadingHTTPServer, str]:
    """Serve `folder` on a free loopback port in a daemon thread; returns the server and its URL."""
    httpd = server(folder, isolated=isolated)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address[:2]
    return httpd, f"http://{host}:{port}/"


def command(*, run: Path, out: Path | None = None, serve: bool = False, port: int = 8000,
            isolated: bool = True, webcam: Path | None = None) -> int:
    """Build a static web page that runs the run's generator.onnx in the browser (onnxruntime-web).

    Exit code 0: built (and, with --serve, served until Ctrl-C); 2: the run, its .onnx or web/node_modules is missing.

    Args:
        run: the run folder (runs/NAME), exported with ONNX (export/generator.onnx, export/metadata.json).
        out: the page's folder (default web/dist/NAME); any static server can serve it.
        serve: then serve it on http://127.0.0.1:PORT/ (Ctrl-C stops).
        port: the port for --serve.
        isolated: with --serve, send the COOP/COEP headers, so the page may use several wasm threads.
        webcam: the run whose .onnx stylizes the webcam (same styles and controls; default: RUN-fast, the
            run's `make distill` twin, when it is exported with ONNX; else the run's own model).
    """
    try:
        folder = build(run, out, webcam=webcam)
    except WebBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    twin = json.loads((folder / PAGE_FILE).read_text()).get("webcam")
    webcam_note = f" (webcam: {twin['name']})" if twin else ""
    print(f"page for {run}{webcam_note} → {folder} ({size / 1e6:.0f} MB with onnxruntime-web); "
          f"serve it with `python -m pipeline web --run {run} --serve true` or any static server")
    if not serve:
        return 0
    httpd = server(folder, port=port, isolated=isolated)
    print(f"serving {folder} on http://127.0.0.1:{httpd.server_address[1]}/ "
          f"({'cross-origin isolated: wasm threads' if isolated else 'not isolated: one wasm thread'}); Ctrl-C stops")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0
