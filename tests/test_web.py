"""The browser page (web/src/, built by pipeline/tools/web.py): the builder's folder and errors, the
server's isolation headers, and, in headless Chromium (the system's, driven by Playwright), a photo
stylized by the page against `python -m pipeline stylize` on the same photo and controls, and the fake
webcam giving stylized frames with a frames/s readout."""
from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from browser_helpers import BROWSER_ARGS, CHROMIUM, ensure_node_modules
from pipeline.tools.web import ISOLATION_HEADERS, ORT_FILES, WEB, WebBuildError, build, command, start

# The page (onnxruntime-web's wasm kernels, JS colour maths) against the CLI (ONNX Runtime's CPU kernels,
# torch's): at most this many 8-bit levels apart on any channel of any pixel, and on few of them (measured on
# this model and on a trained width-32 one, three photos: 1 level, on ≤ 0.13 % of the values; docs/web.md).
TOLERANCE, DIFFERING = 1, 0.01
MIX, STRENGTH = "a:0.7,b:0.3", 0.5


def fake_web(root: Path, version: str = "1.30.0", installed: str | None = "1.30.0") -> Path:
    """A web/ folder like the project's (its real page sources) with a stand-in onnxruntime-web package."""
    web = root / "web"
    shutil.copytree(WEB / "src", web / "src")
    (web / "package.json").write_text(json.dumps({"dependencies": {"onnxruntime-web": version}}))
    if installed is not None:
        dist = web / "node_modules" / "onnxruntime-web" / "dist"
        dist.mkdir(parents=True)
        (dist.parent / "package.json").write_text(json.dumps({"version": installed}))
        for name in ORT_FILES:
            (dist / name).write_bytes(name.encode())
    return web


def fake_run(root: Path, onnx: bool = True) -> Path:
    run = root / "runs" / "demo"
    (run / "export").mkdir(parents=True)
    (run / "export" / "metadata.json").write_text(json.dumps({"styles": ["a"], "run": "demo"}))
    if onnx:
        (run / "export" / "generator.onnx").write_bytes(b"onnx")
    return run


def test_the_page_folder_holds_the_page_the_model_and_onnxruntime_web(tmp_path):
    web, run = fake_web(tmp_path), fake_run(tmp_path)
    out = build(run, web=web)
    assert out == web / "dist" / "demo"
    assert {p.name for p in out.iterdir()} == {"index.html", "app.js", "stylize.js", "style.css", "generator.onnx",
                                               "metadata.json", "page.json", "ort"}
    assert json.loads((out / "page.json").read_text()) == {}  # no fast twin: the webcam runs the model
    assert sorted(p.name for p in (out / "ort").iterdir()) == sorted(ORT_FILES)
    assert (out / "generator.onnx").read_bytes() == b"onnx"
    assert build(run, tmp_path / "elsewhere", web=web) == tmp_path / "elsewhere"  # --out


def test_a_fast_twin_beside_the_run_stylizes_the_webcam(tmp_path):
    """runs/<name>-fast (`make distill`), exported with ONNX, is copied in for the webcam; one with other
    styles is refused; a rebuild without it drops the copy."""
    web, run = fake_web(tmp_path), fake_run(tmp_path)
    twin = run.parent / "demo-fast"
    (twin / "export").mkdir(parents=True)
    (twin / "export" / "generator.onnx").write_bytes(b"fast")
    (twin / "export" / "metadata.json").write_text(json.dumps({"styles": ["a"], "run": "demo-fast"}))
    out = build(run, web=web)
    assert json.loads((out / "page.json").read_text())["webcam"] == {
        "model": "generator-fast.onnx", "metadata": "metadata-fast.json", "name": "demo-fast"}
    assert (out / "generator-fast.onnx").read_bytes() == b"fast" and (out / "generator.onnx").read_bytes() == b"onnx"
    (twin / "export" / "metadata.json").write_text(json.dumps({"styles": ["a", "b"]}))
    with pytest.raises(WebBuildError, match="webcam model .*demo-fast has styles=\\['a', 'b'\\]"):
        build(run, web=web)
    shutil.rmtree(twin)
    assert json.loads((build(run, web=web) / "page.json").read_text()) == {}
    assert not (out / "generator-fast.onnx").exists()


def test_the_server_sends_the_isolation_headers_only_when_asked(tmp_path):
    (tmp_path / "index.html").write_text("<p>hi")
    for isolated in (True, False):
        httpd, url = start(tmp_path, isolated=isolated)
        try:
            with urllib.request.urlopen(url + "index.html") as response:
                headers = {k: response.headers.get(k) for k in ISOLATION_HEADERS}
                assert response.read() == b"<p>hi"
        finally:
            httpd.shutdown()
            httpd.server_close()
        assert headers == (ISOLATION_HEADERS if isolated else dict.fromkeys(ISOLATION_HEADERS))


@pytest.mark.parametrize("case, expected", [
    ("no run", "is not a run folder"),
    ("no onnx", "export the run with ONNX first, `make export NAME=demo`"),
    ("no node_modules", "run `npm ci --prefix"),
    ("other version", "is 1.29.0, web/package.json pins 1.30.0: run `npm ci --prefix"),
])
def test_the_builder_says_what_to_run(tmp_path, case, expected, capsys):
    web = fake_web(tmp_path, installed={"no node_modules": None, "other version": "1.29.0"}.get(case, "1.30.0"))
    run = tmp_path / "runs" / "nothing" if case == "no run" else fake_run(tmp_path, onnx=case != "no onnx")
    with pytest.raises(WebBuildError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        build(run, web=web)
    if case == "no run":  # the command: the same message, exit code 2
        assert command(run=run) == 2
        assert "is not a run folder" in capsys.readouterr().err


# ---- the real page in headless Chromium

@pytest.fixture(scope="module")
def node_modules() -> Path:
    return ensure_node_modules()


@pytest.fixture(scope="module")
def page_folder(tiny_trio: Path, node_modules: Path, tmp_path_factory) -> Path:
    """The page of a tiny 3-style model (a, b, c) with the strength control, built by the real builder
    with the real onnxruntime-web."""
    from pipeline.export.exporter import export_run

    run = tiny_trio.parent.parent
    export_run(run, tiny_trio, formats=["onnx"])
    return build(run, tmp_path_factory.mktemp("page"))


@pytest.fixture(scope="module")
def page_url(page_folder: Path) -> Iterator[str]:
    """The page served cross-origin isolated (several wasm threads)."""
    httpd, url = start(page_folder)
    yield url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def playwright() -> Iterator[object]:
    """Playwright's driver, one per module (its sync API cannot nest), for the system's Chromium."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: the browser tests need Debian's Chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright) -> Iterator[object]:
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
    yield b
    b.close()


@pytest.fixture
def page(browser, page_url):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, errors


def pixels(result: dict) -> np.ndarray:
    """The hook's base64 RGB → (H, W, 3) uint8."""
    rgb = np.frombuffer(base64.b64decode(result["rgb"]), np.uint8)
    return rgb.reshape(result["height"], result["width"], 3)


def cli(run_onnx: Path, photo: Path, out: Path, *options: str) -> np.ndarray:
    from pipeline.tools.stylize import command as stylize

    args = dict(zip(options[::2], options[1::2]))
    assert stylize(photo, out, model=run_onnx, style=args.get("--style"), strength=args.get("--strength"),
                   preserve_color=args.get("--preserve_color") == "true") == 0
    return np.asarray(Image.open(out).convert("RGB"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(data.chelsea()).resize((150, 100), Image.LANCZOS).save(path)
    return path


@pytest.mark.slow
def test_an_uploaded_photo_has_the_cli_pixels(page, page_url, photo, tiny_trio, tmp_path, no_allocator_tuning):
    model = tiny_trio.parent.parent / "export" / "generator.onnx"
    page.goto(page_url + "?backend=wasm")
    info = page.evaluate("instyle.ready()")
    assert info["styles"] == ["a", "b", "c"] and info["strength"] and info["backend"] == "wasm"
    assert page.is_visible("#mix") and page.is_visible("#strength")
    # default controls: the first style at full strength, the photo's own size
    page.set_input_files("#photo", str(photo))
    assert page.evaluate("instyle.settled()") == 1
    default = pixels(page.evaluate("instyle.output()"))
    expected = cli(model, photo, tmp_path / "default.png")
    assert default.shape == expected.shape == (100, 150, 3)
    diff = np.abs(default.astype(int) - expected)
    assert diff.max() <= TOLERANCE and (diff > 0).mean() < DIFFERING, f"max {diff.max()}, {(diff > 0).mean():.2%} differ"
    # a mix, half strength, the photo's colours: set on the page's controls, which re-stylize the photo
    page.fill("#mix input[data-style='0']", "70")
    page.fill("#mix input[data-style='1']", "30")
    page.fill("#strength", "0.5")
    page.check("#preserve-color")
    assert page.input_value("#style") == "mix"
    page.evaluate("instyle.settled()")
    mixed = pixels(page.evaluate("instyle.output()"))
    expected = cli(model, photo, tmp_path / "mixed.png", "--style", MIX, "--strength", str(STRENGTH),
                   "--preserve_color", "true")
    diff = np.abs(mixed.astype(int) - expected)
    assert diff.max() <= TOLERANCE and (diff > 0).mean() < DIFFERING, f"max {diff.max()}, {(diff > 0).mean():.2%} differ"
    assert np.abs(mixed.astype(int) - default).mean() > 1  # the controls changed the picture


@pytest.mark.slow
def test_the_webcam_gives_stylized_frames_and_a_frame_rate(page, page_url):
    page.goto(page_url)
    info = page.evaluate("instyle.ready()")
    assert info["backend"] in ("wasm", "webgpu") and info["crossOriginIsolated"]
    page.click("#webcam")
    page.wait_for_function("instyle.counter().frames >= 3", timeout=60_000)
    counter = page.evaluate("instyle.counter()")
    assert (counter["width"], counter["height"]) == (640, 360)  # the page asks the camera for 640×360
    assert page.evaluate("instyle.fps()") > 0
    assert "fps" in page.inner_text("#fps")
    frame = pixels(page.evaluate("instyle.output()"))
    assert frame.shape == (360, 640, 3) and frame.std() > 1  # a picture, not a blank canvas
    page.click("#webcam")  # stop


@pytest.mark.slow
def test_without_isolation_the_page_runs_one_wasm_thread(browser, page_folder):
    httpd, url = start(page_folder, isolated=False)
    page = browser.new_page()
    try:
        page.goto(url + "?backend=wasm")
        info = page.evaluate("instyle.ready()")
        assert not info["crossOriginIsolated"] and info["threads"] == 1
        assert "1 thread (not cross-origin isolated)" in page.inner_text("#status")
    finally:
        page.close()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_the_webgpu_backend_on_a_software_adapter_has_the_cli_pixels(playwright, page_folder, photo, tiny_trio, tmp_path,
                                                                      no_allocator_tuning):
    """WebGPU through Chromium's SwiftShader adapter (CPU Vulkan): the page's other backend, its own
    onnxruntime-web build, exercised without a GPU."""
    shutil.copyfile(photo, page_folder / photo.name)
    software = ["--enable-unsafe-swiftshader", "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader",
                "--enable-features=Vulkan", "--use-angle=swiftshader"]
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=[a for a in BROWSER_ARGS if a != "--disable-gpu"] + software)
    httpd, url = start(page_folder)
    try:
        page = browser.new_page()
        page.goto(url)
        if page.evaluate("instyle.ready()")["backend"] != "webgpu":
            pytest.skip("this Chromium offers no WebGPU adapter, not even SwiftShader's")
        got = pixels(page.evaluate("u => instyle.stylizeUrl(u, {weights: [0, 1, 1], strength: 0.25})", photo.name))
    finally:
        browser.close()
        httpd.shutdown()
        httpd.server_close()
    expected = cli(tiny_trio.parent.parent / "export" / "generator.onnx", photo, tmp_path / "gpu.png",
                   "--style", "b:1,c:1", "--strength", "0.25")
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= TOLERANCE and (diff > 0).mean() < DIFFERING, f"max {diff.max()}, {(diff > 0).mean():.2%} differ"


@pytest.mark.slow
def test_the_page_runs_the_fast_twin_on_the_webcam(browser, tiny_trio, tmp_path):
    """A run with a compact twin beside it (runs/trio-fast: same styles and strength control): the page's
    webcam frames come from the twin, photos from the run's own model, `?webcam=full` overrides."""
    from pipeline.export.exporter import export_run
    from serving_helpers import make_checkpoint

    run = tmp_path / "runs" / "trio"
    shutil.copytree(tiny_trio.parents[1], run)
    export_run(run, formats=["onnx"])
    twin = tmp_path / "runs" / "trio-fast"
    make_checkpoint(twin, arch="compact", width=8, n_residual=1, styles=["a", "b", "c"], strength=True)
    export_run(twin, formats=["onnx"])
    httpd, url = start(build(run, tmp_path / "page"))
    try:
        for query, expected in (("", "trio-fast"), ("?webcam=full", None)):
            page = browser.new_page()
            page.goto(url + query)
            assert page.evaluate("instyle.ready()")["webcam"] == expected
            page.click("#webcam")
            page.wait_for_function("instyle.counter().frames >= 3", timeout=60_000)
            assert ("trio-fast" in page.inner_text("#fps")) == (expected is not None)
            assert pixels(page.evaluate("instyle.output()")).shape == (360, 640, 3)
            page.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
