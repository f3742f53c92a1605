"""pipeline.export.archive: the .mar holds what the worker needs, runs without the project installed,
and re-archiving replaces it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from pipeline.__main__ import main as cli
from pipeline.export.archive import archive_run
from pipeline.serve.model_io import load_model
from pipeline.tools.stylize import stylize_bytes
from serving_helpers import BLOCK_TRAINING_DEPS, encode_pil, rng_image, shared_export

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
SERVE_DIR = ROOT / "pipeline" / "serve"
ONNX_RUNNER = "pipeline/serve/onnx_runtime.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The shared run exported in every format (~20 s: the slow tier's)."""
    return shared_export(tmp_path_factory)


# The archive of the .pt export (a 1 s export) in the fast tier; of the .pt2, the default, in the slow tier.
SERIALIZED = ["pt", pytest.param("pt2", marks=pytest.mark.slow)]


def exported_run(tmp_path_factory, serialized: str):
    """The shared run with (at least) `serialized`'s export."""
    return shared_export(tmp_path_factory, **({} if serialized == "pt2" else {"formats": ("pt",)}))


@pytest.mark.parametrize("serialized", SERIALIZED)
def test_archive_contents(tmp_path_factory, tmp_path, serialized):
    options = {} if serialized == "pt2" else {"serialized": serialized}  # pt2: the default
    mar = archive_run(exported_run(tmp_path_factory, serialized), tmp_path / "store", batch_size=4, max_batch_delay_ms=20,
                      max_side=2048, max_memory_mb=512, **options)
    assert mar == tmp_path / "store" / "demo.mar"
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        config = z.read("model-config.yaml").decode()
        init = z.read("pipeline/__init__.py").decode()
    # The serving core whole, as found on disk (independently of the archiver's own import walk), but for the
    # ONNX runner: the loader imports it inside the function, for an .onnx, which TorchServe does not serve ...
    serve = {f"pipeline/serve/{p.relative_to(SERVE_DIR)}" for p in SERVE_DIR.rglob("*.py")} - {ONNX_RUNNER}
    assert {"pipeline/serve/inference.py", "pipeline/serve/model_io.py", "pipeline/serve/tiling.py"} <= serve
    assert {"stylize_handler.py", f"generator.{serialized}", "metadata.json", "model-config.yaml", "pipeline/__init__.py"} | serve <= names
    # ... the generator's definition (tiled inference runs its modules) and the image codec ...
    assert {"pipeline/model/generators.py", "pipeline/model/norms.py", "pipeline/common/image_codec.py"} <= names
    # ... and nothing else of the project: no offline tool (video, stylize), no ONNX runner, no training.
    bundled = sorted(n for n in names if n.startswith("pipeline/"))
    assert all(n.startswith(("pipeline/serve/", "pipeline/model/", "pipeline/common/")) or n == "pipeline/__init__.py"
               for n in bundled), bundled
    assert ONNX_RUNNER in {f"pipeline/serve/{p.name}" for p in SERVE_DIR.glob("*.py")}  # a name that still exists
    assert not {"pipeline/model/pytorch_examples.py", ONNX_RUNNER} & names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert manifest["model"]["serializedFile"] == f"generator.{serialized}" and manifest["model"]["handler"] == "stylize_handler.py"
    assert not {f"generator.{other}" for other in ("pt", "pt2", "onnx") if other != serialized} & names
    assert "batchSize: 4" in config and "maxBatchDelay: 20" in config and "max_side: 2048" in config
    assert "max_memory_mb: 512" in config
    assert "import" not in init  # the package root must not pull in training dependencies
    assert not list((tmp_path / "store").glob(".demo.*"))  # no staging left behind


@pytest.mark.slow
def test_rearchive_replaces_and_pt_option(run, tmp_path):
    store = tmp_path / "store"
    first = archive_run(run, store).stat().st_mtime_ns
    mar = archive_run(run, store, serialized="pt")
    assert mar.stat().st_mtime_ns >= first
    with zipfile.ZipFile(mar) as z:
        assert json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"] == "generator.pt"
        assert "generator.pt2" not in z.namelist()


@pytest.mark.parametrize("serialized", SERIALIZED)
def test_cli_archives_every_exported_run(tmp_path_factory, tmp_path, capsys, serialized):
    run = exported_run(tmp_path_factory, serialized)
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "one")
    shutil.copytree(run, runs / "two")
    (runs / "not_exported" / "checkpoints").mkdir(parents=True)
    store = tmp_path / "store"
    option = [] if serialized == "pt2" else ["--serialized", serialized]  # pt2: the default
    assert cli(["archive", "--runs", str(runs), "--store", str(store), *option]) == 0
    assert sorted(p.name for p in store.glob("*.mar")) == ["one.mar", "two.mar"]
    assert cli(["archive", "--runs", str(runs), "--store", str(store), "--name", "not_exported", *option]) == 1
    assert "python -m pipeline export --run" in capsys.readouterr().err
    assert cli(["archive", "--runs", str(tmp_path / "empty"), "--store", str(store)]) == 1


def test_bad_model_name_is_refused(tmp_path_factory, tmp_path):
    with pytest.raises(ValueError, match="not allowed"):
        archive_run(exported_run(tmp_path_factory, "pt"), tmp_path, name="bad name!")


@pytest.mark.slow
def test_handler_runs_from_the_extracted_archive_without_the_project(run, tmp_path):
    """What the worker does: model dir first on PYTHONPATH, import the handler, initialize, handle.
    The project's own `pipeline`/`handlers` packages are made unimportable to prove the bundle suffices,
    and Lightning, webdataset and torchvision are blocked: serving must not need them. The pixels
    equal those of the project's own offline path on the same model file."""
    mar = archive_run(run, tmp_path / "store")
    model_dir = tmp_path / "model_dir"
    with zipfile.ZipFile(mar) as z:
        z.extractall(model_dir)
    (tmp_path / "in.png").write_bytes(encode_pil(rng_image(19, 23, channels=4)))
    script = textwrap.dedent(f"""
        import sys
        # drop the editable-install finder and the repo from the path: only the archive may provide `pipeline`
        sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "").lower()
                         and "editable" not in type(f).__module__.lower()]
        sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
        sys.path.insert(0, {str(model_dir)!r})
        {BLOCK_TRAINING_DEPS}
        import json, os, ts
        from ts.context import Context, RequestProcessor
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
        import stylize_handler, pipeline
        assert pipeline.__file__.startswith({str(model_dir)!r}), pipeline.__file__
        for stage in ("train", "loss", "data", "export", "quality", "ops"):
            try:
                __import__("pipeline." + stage)
                raise SystemExit("training code leaked into the worker: pipeline." + stage)
            except ImportError:
                pass
        metrics = MetricsCacheYamlImpl(os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml"))
        manifest = json.load(open(os.path.join({str(model_dir)!r}, "MAR-INF", "MANIFEST.json")))
        ctx = Context("demo", {str(model_dir)!r}, manifest, 1, None, "0.12.0", metrics=metrics, model_yaml_config={{}})
        handler = stylize_handler.StylizeHandler()
        handler.initialize(ctx)
        ctx.request_processor = [RequestProcessor({{"Content-Type": "image/png"}})]
        ctx.request_ids = {{0: "r0"}}
        metrics.request_ids = ctx.request_ids
        out = handler.handle([{{"body": bytearray(open({str(tmp_path / "in.png")!r}, "rb").read())}}], ctx)
        assert ctx.get_response_status(0)[0] == 200 and ctx.get_response_content_type(0) == "image/png"
        open({str(tmp_path / "out.png")!r}, "wb").write(out[0])
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    from PIL import Image
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (23, 19) and im.mode == "RGBA"
    model, _ = load_model(run / "export" / "generator.pt2")
    expected, _ = stylize_bytes(model, (tmp_path / "in.png").read_bytes(), {"format": "png"})
    assert (tmp_path / "out.png").read_bytes() == expected
