"""`pipeline/ops/grpc_client.py` against an in-process gRPC server: stubs from TorchServe's jar, the request's
options and token, errors, and the command's exit codes."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from pipeline.ops import grpc_client, torchserve_local

pytestmark = pytest.mark.usefixtures("no_allocator_tuning")


# ---- pipeline/ops/grpc_client.py -----------------------------------------------------------------

def test_predict_error_parses_the_handlers_json() -> None:
    """PredictError: the handler's JSON error (first line of the details) as .error; None for
    details that are not a JSON object with an 'error' key."""
    details = json.dumps({"error": "unknown style 'x'", "styles": ["a"]}) + "\norg.pytorch.serve.http.InternalServerException"
    err = grpc_client.PredictError(grpc.StatusCode.INVALID_ARGUMENT, details)
    assert err.error == {"error": "unknown style 'x'", "styles": ["a"]} and err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(err).startswith("gRPC INVALID_ARGUMENT: {")
    for other in ("Model not found", "[1, 2]", '{"message": "x"}', ""):
        assert grpc_client.PredictError(grpc.StatusCode.INTERNAL, other).error is None


def test_generate_stubs_compiles_torchserves_protos(tmp_path: Path) -> None:
    """generate_stubs: the jar's inference/management protos (and their non-well-known imports)
    compiled into a regular package; a missing jar is a FileNotFoundError."""
    assert grpc_client.frontend_jar().name == "model-server.jar" and grpc_client.frontend_jar().is_file()
    out = grpc_client.generate_stubs(tmp_path / "stubs")
    pkg = out / grpc_client.PACKAGE
    assert {"__init__.py", "inference_pb2.py", "inference_pb2_grpc.py", "management_pb2.py",
            "management_pb2_grpc.py"} <= {p.name for p in pkg.iterdir()}
    assert "InferenceAPIsServiceStub" in (pkg / "inference_pb2_grpc.py").read_text()
    with pytest.raises(FileNotFoundError):
        grpc_client.generate_stubs(tmp_path / "x", jar=tmp_path / "missing.jar")


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[tuple[int, list[tuple[str, dict[str, bytes], dict[str, str]]]]]:
    """An in-process gRPC server with TorchServe's inference service (the generated stubs): model
    'refuse' aborts with a JSON error, 'ok-error' answers a JSON error with status OK, 'ok-json'
    answers other JSON, any other name answers b'PNG' + the reversed image bytes."""
    pb2, pb2_grpc = grpc_client.load_stubs()
    seen: list[tuple[str, dict[str, bytes], dict[str, str]]] = []

    class Servicer(pb2_grpc.InferenceAPIsServiceServicer):
        def Predictions(self, request: Any, context: grpc.ServicerContext) -> Any:
            seen.append((request.model_name, dict(request.input), dict(context.invocation_metadata())))
            if request.model_name == "refuse":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              json.dumps({"error": "unknown style 'x'"}) + "\norg.pytorch.serve.http.InternalServerException")
            if request.model_name == "ok-error":
                return pb2.PredictionResponse(prediction=b'{"error": "image too large", "code": 413}')
            if request.model_name == "ok-json":
                return pb2.PredictionResponse(prediction=b'{"styles": ["a"]}')
            return pb2.PredictionResponse(prediction=b"PNG" + request.input["data"][::-1])

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb2_grpc.add_InferenceAPIsServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, seen
    server.stop(None)


def test_predict_sends_image_options_and_token(grpc_server: tuple[int, list]) -> None:
    """predict: the image under 'data', options as UTF-8 strings (None left out), the token as
    `authorization: Bearer`; no metadata without a token; a JSON error with status OK or an error
    status raise PredictError with the parsed error; other JSON passes through."""
    port, seen = grpc_server
    seen.clear()
    got = grpc_client.predict(b"\x01\x02\x03", "demo", "tok", port=port,
                              options={"style": "a:0.5,b:0.5", "strength": 0.25, "preserve_color": None, "max_side": 64})
    assert got == b"PNG\x03\x02\x01"
    name, inputs, metadata = seen[-1]
    assert name == "demo" and inputs == {"data": b"\x01\x02\x03", "style": b"a:0.5,b:0.5", "strength": b"0.25", "max_side": b"64"}
    assert metadata["authorization"] == "Bearer tok"
    grpc_client.predict(b"x", "demo", None, port=port, field="body")
    assert "authorization" not in seen[-1][2] and seen[-1][1] == {"body": b"x"}
    with pytest.raises(grpc_client.PredictError) as refused:
        grpc_client.predict(b"x", "refuse", "tok", port=port)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and refused.value.error == {"error": "unknown style 'x'"}
    with pytest.raises(grpc_client.PredictError) as ok_error:
        grpc_client.predict(b"x", "ok-error", "tok", port=port)
    assert ok_error.value.code == grpc.StatusCode.OK and ok_error.value.error["code"] == 413
    assert grpc_client.predict(b"x", "ok-json", "tok", port=port) == b'{"styles": ["a"]}'


def test_grpc_command_writes_only_accepted_answers(grpc_server: tuple[int, list], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The command: the key file's inference key is sent; exit 0 and the file written; a refused
    request exits 1 with the status and writes nothing; an unreadable input or key file exits 2."""
    port, seen = grpc_server
    (tmp_path / "in.png").write_bytes(b"image")
    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({"inference": {"key": "k1"}, "management": {"key": "k2"}}))
    out = tmp_path / "sub" / "out.png"
    assert grpc_client.command(tmp_path / "in.png", out, model="demo", port=port, key_file=keys, strength="0.5") == 0
    assert out.read_bytes() == b"PNGegami" and seen[-1][2]["authorization"] == "Bearer k1"
    assert seen[-1][1] == {"data": b"image", "strength": b"0.5"}
    refused = tmp_path / "refused.png"
    assert grpc_client.command(tmp_path / "in.png", refused, model="refuse", port=port, key_file=keys) == 1
    assert "gRPC status INVALID_ARGUMENT" in capsys.readouterr().err and not refused.exists()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "nokey.json").write_text(json.dumps({"management": {"key": "k2"}}))
    for key_file, image in ((tmp_path / "missing.json", tmp_path / "in.png"), (tmp_path / "bad.json", tmp_path / "in.png"),
                            (tmp_path / "nokey.json", tmp_path / "in.png"), (keys, tmp_path / "missing.png")):
        assert grpc_client.command(image, refused, model="demo", port=port, key_file=key_file) == 2
    err = capsys.readouterr().err
    assert "FileNotFoundError" in err and "JSONDecodeError" in err and "KeyError: 'inference'" in err
    assert not refused.exists()


def test_grpc_command_unreachable_server_is_status_unavailable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Nothing listening on the port: exit 1 with gRPC status UNAVAILABLE, no output file."""
    (tmp_path / "in.png").write_bytes(b"image")
    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({"inference": {"key": "k"}}))
    (port,) = torchserve_local.free_ports(1)
    assert grpc_client.command(tmp_path / "in.png", tmp_path / "o.png", model="demo", port=port, key_file=keys, timeout=5) == 1
    assert "gRPC status UNAVAILABLE" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
