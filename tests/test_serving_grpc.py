"""TorchServe's gRPC inference API against the real server: stubs generated at test time from the
protos in TorchServe's jar (pipeline.ops.grpc_client), one private LocalTorchServe for the module
(repo config.properties, token auth on), stopped by its own process group.

Error behaviour of TorchServe 0.12's gRPC path (docs/_grpc_section.md): a per-request HTTP status
set with context.set_response_status is dropped (status OK, the JSON error as the prediction);
only a PredictionException raised for the whole batch becomes a gRPC error status (400 →
INVALID_ARGUMENT, 413 → RESOURCE_EXHAUSTED, other 4xx → FAILED_PRECONDITION, 5xx → INTERNAL)
whose details are the exception's message followed by "\\norg.pytorch.serve.http.InternalServerException".
"""
from __future__ import annotations

import json
import shutil

import grpc
import pytest

import numpy as np

from pipeline.__main__ import main as pipeline_main
from pipeline.export.archive import archive_run
from pipeline.export.exporter import export_run
from pipeline.ops.grpc_client import PredictError, load_stubs, predict
from pipeline.ops.torchserve_local import TORCHSERVE, LocalTorchServe
from serving_helpers import decode_pil, encode_pil, make_checkpoint, reference_output, rng_image

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None or not TORCHSERVE.exists(), reason="needs Java and torchserve")]

MODEL = "trio"
STYLES = ["mosaic", "wave", "scream"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A three-style model with the strength control, exported."""
    run = tmp_path_factory.mktemp("grpc_runs") / MODEL
    make_checkpoint(run, styles=STYLES, strength=True)
    export_run(run, formats=("pt2",))
    return run


@pytest.fixture(scope="module")
def server(tmp_path_factory, run):
    """One TorchServe (HTTP + gRPC on free loopback ports) serving MODEL, with stubs generated."""
    load_stubs(tmp_path_factory.mktemp("grpc_stubs"))
    store = tmp_path_factory.mktemp("grpc_store")
    archive_run(run, store, name=MODEL)
    ts = LocalTorchServe(tmp_path_factory.mktemp("grpc_server"), store)
    ts.start()
    try:
        ts.wait_ready([MODEL])
        yield ts
    finally:
        ts.stop()


def call(ts: LocalTorchServe, image: bytes, token: str | None = "inference", **options: str) -> bytes:
    return predict(image, MODEL, ts.keys[token] if token else None, port=ts.grpc_inference, options=options, timeout=120)


def test_png_in_same_size_png_out_same_bytes_as_http(server):
    photo = encode_pil(rng_image(37, 53, seed=31))
    body = call(server, photo)
    out = decode_pil(body)
    assert out.format == "PNG" and out.size == (53, 37)
    status, ctype, http_body = server.request("POST", f"/predictions/{MODEL}", photo, {"Content-Type": "image/png"})
    assert (status, ctype) == (200, "image/png") and http_body == body  # one handler, one answer


def test_token_is_required(server):
    photo = encode_pil(rng_image(16, 16, seed=32))
    server.keys["wrong"] = "not-the-key"
    for token in (None, "wrong", "management"):  # the management key is not an inference key
        with pytest.raises(PredictError) as info:
            call(server, photo, token=token)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, (token, info.value)
        assert "Token Authorization failed" in info.value.details


def test_option_fields_are_passed(server):
    photo = encode_pil(rng_image(40, 30, seed=33))
    out = decode_pil(call(server, photo, format="jpeg", quality="80"))
    assert out.format == "JPEG" and out.size == (30, 40)
    assert max(decode_pil(call(server, photo, max_side="20")).size) == 20


def test_cli_writes_output_or_reports_the_status(server, tmp_path, capsys):
    photo = tmp_path / "in.png"
    photo.write_bytes(encode_pil(rng_image(24, 32, seed=34)))
    key_file = server.cwd / "key_file.json"
    common = ["--port", str(server.grpc_inference), "--key_file", str(key_file)]
    args = ["grpc-predict", "--model", MODEL, "--format", "webp", *common, str(photo), str(tmp_path / "o.webp")]
    assert pipeline_main(args) == 0
    out = decode_pil((tmp_path / "o.webp").read_bytes())
    assert out.format == "WEBP" and out.size == (32, 24)
    # an unknown model: TorchServe answers INTERNAL "Model not found"; exit 1, nothing written
    assert pipeline_main(["grpc-predict", "--model", "nope", *common, str(photo), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "INTERNAL" in err and "nope" in err and not (tmp_path / "x.png").exists()


def test_bad_body_is_a_grpc_error_with_the_json_error(server):
    """Needs the handler to raise PredictionException(JSON error, HTTP status) when a batch of one
    fails; with a per-request set_response_status the gRPC client gets OK and the JSON as the body."""
    with pytest.raises(PredictError) as info:
        call(server, b"this is not an image")
    e = info.value
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT, f"{e.code.name}: {e.details[:300]}"
    assert e.error is not None and e.error["status"] == 400 and "cannot decode" in e.error["error"], e.details
    assert json.loads(e.details.split("\n")[0]) == e.error
    assert decode_pil(call(server, encode_pil(rng_image(16, 16, seed=35)))).size == (16, 16)  # the worker carries on


def test_style_options_as_input_fields_give_the_styles_mixes_and_strengths(server, run):
    """Each answer against the one computed without the serving code (Pillow + the eager generator with
    those style weights and that strength; Pillow's YCbCr for the colours)."""
    photo = encode_pil(rng_image(33, 47, seed=36))
    outputs = []
    for options, reference in (({}, {}), ({"style": "wave"}, {"style": {"wave": 1}}),
                               ({"style": "mosaic:0.3,scream:0.7", "strength": "0.4"},
                                {"style": {"mosaic": 0.3, "scream": 0.7}, "strength": 0.4}),
                               ({"style": "scream", "preserve_color": "true"}, {"style": {"scream": 1}, "preserve_color": True})):
        got = np.asarray(decode_pil(call(server, photo, **options)))
        want = reference_output(run, photo, **reference)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, options
        outputs.append(got)
    assert all(np.abs(outputs[0].astype(int) - o.astype(int)).mean() > 0.5 for o in outputs[1:])


@pytest.mark.parametrize("options,message", [({"style": "mona_lisa"}, "unknown style 'mona_lisa'"),
                                             ({"strength": "2"}, "outside [0, 1]")])
def test_bad_style_options_are_invalid_argument_listing_the_styles(server, options, message):
    with pytest.raises(PredictError) as info:
        call(server, encode_pil(rng_image(16, 16, seed=37)), **options)
    e = info.value
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and message in e.error["error"], e.details
    assert e.error["styles"] == STYLES
