"""TorchServe's own gRPC inference API (config.properties' grpc_inference_port, 127.0.0.1:7070).
Stubs are generated at run time from the .proto files in TorchServe's frontend jar (nothing generated
is committed); `predict` sends one image plus string options as entries of the request's `input` map,
with the inference key as `authorization: Bearer <key>` metadata. Errors: docs/serving.md, "gRPC".
"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import grpc

from pipeline.ops.torchserve_api import read_keys

PACKAGE = "torchserve_grpc"  # the generated modules: torchserve_grpc.inference_pb2, …_pb2_grpc, management_pb2, …
PROTOS = ("inference.proto", "management.proto")
MAX_MESSAGE = 104857600  # config.properties' max_request_size / max_response_size; grpc's client default is 4 MB
_STUBS: dict[str, ModuleType] = {}


class PredictError(RuntimeError):
    """A refused prediction: the gRPC status code, its details and, when the details (or an OK
    response's body) are the handler's JSON error, that JSON as `error`."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details
        try:  # TorchServe appends "\norg.pytorch.serve.http.InternalServerException" to the handler's message
            error = json.loads(details.split("\n", 1)[0])
        except ValueError:
            error = None
        self.error: dict[str, Any] | None = error if isinstance(error, dict) and "error" in error else None
        super().__init__(f"gRPC {code.name}: {details}")


def frontend_jar() -> Path:
    """TorchServe's model-server.jar (located without importing the `ts` package)."""
    spec = importlib.util.find_spec("ts")
    return Path(spec.origin if spec and spec.origin else "ts/__init__.py").parent / "frontend" / "model-server.jar"


def generate_stubs(out_dir: Path, jar: Path | None = None) -> Path:
    """Extract inference.proto, management.proto and their non-well-known imports from the jar
    and compile them with grpc_tools.protoc into `out_dir/torchserve_grpc/`; returns `out_dir`."""
    from grpc_tools import protoc

    out_dir, src, done = Path(out_dir), Path(out_dir) / "_proto", set()
    with zipfile.ZipFile(jar or frontend_jar()) as zf:  # a missing jar: FileNotFoundError naming it
        todo = [(name, f"{PACKAGE}/{name}") for name in PROTOS]  # (jar member, path under src)
        while todo:
            member, dest = todo.pop()
            text = zf.read(member).decode("utf-8")
            (src / dest).parent.mkdir(parents=True, exist_ok=True)
            (src / dest).write_text(text)
            done.add(dest)
            todo += [(imp, imp) for imp in re.findall(r'^\s*import\s+(?:public\s+)?"([^"]+)"\s*;', text, re.M)
                     if not imp.startswith("google/protobuf/") and imp not in done]  # well-known: grpc_tools has them
    have_status = importlib.util.find_spec("google.rpc") is not None  # googleapis-common-protos installed?
    files = sorted(d for d in done if not (have_status and d.startswith("google/")))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{src}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + files) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {files} (its message is above)")
    (out_dir / PACKAGE / "__init__.py").touch()  # a regular package; google/ stays a namespace package
    return out_dir


def load_stubs(out_dir: Path | None = None) -> tuple[ModuleType, ModuleType]:
    """(inference_pb2, inference_pb2_grpc), generated into `out_dir` (default: a temporary
    directory) and imported; later calls in the same process return the same modules."""
    if not _STUBS:
        tmp = None if out_dir is not None else tempfile.TemporaryDirectory(prefix="ts-grpc-")
        root = str(generate_stubs(Path(out_dir if tmp is None else tmp.name)))
        sys.path.append(root)  # the generated code imports `torchserve_grpc.…` and `google.rpc.status_pb2`
        try:
            for name in ("inference_pb2", "inference_pb2_grpc"):  # management_pb2(_grpc) are generated too
                _STUBS[name] = importlib.import_module(f"{PACKAGE}.{name}")
        finally:
            if tmp is not None:  # everything is imported by now
                sys.path.remove(root)
                tmp.cleanup()
    return _STUBS["inference_pb2"], _STUBS["inference_pb2_grpc"]


def predict(image: bytes, model: str, token: str | None, *, host: str = "127.0.0.1", port: int = 7070,
            options: Mapping[str, Any] | None = None, field: str = "data", timeout: float = 300,
            stubs_dir: Path | None = None) -> bytes:
    """The model's response bytes for one image; options (style, strength, format, …) travel as
    UTF-8 entries of the `input` map. Raises PredictError on a gRPC error status, and on an OK
    response whose body is the handler's JSON error (TorchServe's gRPC path drops HTTP statuses)."""
    pb2, pb2_grpc = load_stubs(stubs_dir)
    inputs = {field: image, **{k: str(v).encode("utf-8") for k, v in (options or {}).items() if v is not None}}
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    channel_options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    with grpc.insecure_channel(f"{host}:{port}", options=channel_options) as channel:
        stub = pb2_grpc.InferenceAPIsServiceStub(channel)
        try:
            reply = stub.Predictions(pb2.PredictionsRequest(model_name=model, input=inputs), metadata=metadata,
                                     timeout=timeout)
        except grpc.RpcError as e:
            raise PredictError(e.code(), e.details() or "") from None
    if reply.prediction[:1] == b"{":  # images never start with "{": a per-request error sent with status OK
        err = PredictError(grpc.StatusCode.OK, reply.prediction.decode("utf-8", "replace"))
        if err.error is not None:
            raise err
    return reply.prediction


def command(input: Path, output: Path, *, model: str, host: str = "127.0.0.1", port: int = 7070,
            key_file: Path = Path("key_file.json"), style: str | None = None, strength: str | None = None,
            preserve_color: str | None = None, format: str | None = None, quality: str | None = None,
            max_side: str | None = None, timeout: float = 300) -> int:
    """Stylize one image through TorchServe's gRPC inference API (the token from key_file.json).

    Exit code 0: written; 1: the server refused it (gRPC status and details on stderr, nothing
    written); 2: the input or the key file cannot be read.

    Args:
        input: image file.
        output: where the response is written.
        model: the served model's name.
        host: gRPC address (config.properties' grpc_inference_address).
        port: gRPC inference port (grpc_inference_port).
        key_file: TorchServe's key_file.json; its inference key is sent as the Bearer token.
        style: style name or index of a multi-style model.
        strength: stylization strength.
        preserve_color: true: keep the photo's colours.
        format: png, jpeg or webp.
        quality: jpeg/webp quality 1..100.
        max_side: downscale so the longer side is ≤ N.
        timeout: seconds to wait for the response.
    """
    try:
        image = Path(input).read_bytes()
        token = read_keys(key_file)["inference"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    options = dict(style=style, strength=strength, preserve_color=preserve_color, format=format, quality=quality,
                   max_side=max_side)  # None: not sent (the server's default)
    try:
        body = predict(image, model, token, host=host, port=port, options=options, timeout=timeout)
    except PredictError as e:
        print(f"error: {model}: gRPC status {e.code.name}: {e.details}", file=sys.stderr)
        return 1
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_bytes(body)  # only now: a refused request leaves no file
    print(f"{input} → {output} ({len(body)} bytes)")
    return 0
