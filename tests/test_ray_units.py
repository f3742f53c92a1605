"""The Ray engine's parts that need no cluster: the served config (Ray's own schema, no secrets in it), the
keys file, the models found, the HTTP request read as TorchServe's worker reads it, and bad arguments."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from starlette.requests import Request

from handlers.ray_serve import request_row
from pipeline.ops import loadtest, ray_serve_local
from pipeline.ops.ray_serve_local import TEMPLATE, exported_models, serve_config, write_keys
from pipeline.ops.torchserve_api import read_keys
from pipeline.serve.requests import split_request


def test_the_committed_config_is_a_valid_ray_serve_config_on_loopback():
    raw = yaml.safe_load(TEMPLATE.read_text())
    ServeDeploySchema.model_validate(raw)
    assert raw["http_options"]["host"] == "127.0.0.1" and raw["http_options"]["port"] == 8080
    (app,) = raw["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    assert deployments["Stylizer"]["autoscaling_config"]["max_replicas"] > deployments["Stylizer"]["autoscaling_config"]["min_replicas"]
    assert deployments["Stylizer"]["max_queued_requests"] > 0  # a bound: 503 beyond it, never an unbounded queue


def test_served_config_holds_digests_not_keys(tmp_path):
    keys = write_keys(tmp_path / "key_file.json")
    assert oct((tmp_path / "key_file.json").stat().st_mode)[-3:] == "600"
    assert read_keys(tmp_path / "key_file.json") == keys and keys["inference"] != keys["management"]
    config = serve_config({"a": "/m/a.pt2"}, keys, host="0.0.0.0", port=9000,
                          overrides={"Stylizer": {"autoscaling_config": {"max_replicas": 7}, "max_queued_requests": 5}})
    ServeDeploySchema.model_validate(config)
    text = yaml.safe_dump(config)
    assert keys["inference"] not in text and keys["management"] not in text
    (app,) = config["applications"]
    assert app["args"]["token_sha256"]["inference"] == hashlib.sha256(keys["inference"].encode()).hexdigest()
    assert app["args"]["models"] == {"a": "/m/a.pt2"} and config["http_options"]["host"] == "0.0.0.0"
    stylizer = next(d for d in app["deployments"] if d["name"] == "Stylizer")
    assert stylizer["max_queued_requests"] == 5
    assert stylizer["autoscaling_config"]["max_replicas"] == 7 and stylizer["autoscaling_config"]["min_replicas"] == 1


def test_exported_models_are_found_or_named_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="make export NAME=<run> first"):
        exported_models(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name / "export").mkdir(parents=True)
        (tmp_path / name / "export" / "generator.pt2").write_bytes(b"x")
    (tmp_path / "c" / "checkpoints").mkdir(parents=True)  # trained, not exported
    assert list(exported_models(tmp_path)) == ["a", "b"]
    assert exported_models(tmp_path, ["b"]) == {"b": str((tmp_path / "b" / "export" / "generator.pt2").resolve())}
    with pytest.raises(FileNotFoundError, match="make export NAME=c"):
        exported_models(tmp_path, ["b", "c"])


def _request(body: bytes, content_type: str, query: str = "") -> Request:
    sent = []

    async def receive():
        if sent:
            return {"type": "http.disconnect"}
        sent.append(1)
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", content_type.encode()), (b"x-format", b"jpeg")]
    return Request({"type": "http", "method": "POST", "path": "/predictions/m", "query_string": query.encode(),
                    "headers": headers}, receive)


def test_request_rows_are_read_as_torchserve_reads_them():
    """Raw body → `body`; query parameters as fields; multipart fields by name, text decoded, JSON parsed, files as
    bytes; then the shared rules (split_request) give the options and the image."""
    row, headers = asyncio.run(request_row(_request(b"\x89PNG", "image/png", "quality=70&model_name=m")))
    assert row == {"quality": b"70", "model_name": b"m", "body": b"\x89PNG"}
    assert split_request(row, headers) == (b"\x89PNG", {"format": "jpeg", "quality": "70"})
    row, _ = asyncio.run(request_row(_request(b"hello", "text/plain")))
    assert row == {"body": "hello"}  # text: decoded, so split_request answers 415 as for TorchServe
    boundary = "b0"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
            f"PNGDATA\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"style\"\r\n\r\nudnie\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"; filename=\"m.json\"\r\nContent-Type: application/json\r\n\r\n"
            f"{{\"a\": 1}}\r\n--{boundary}--\r\n").encode()
    row, _ = asyncio.run(request_row(_request(form, f"multipart/form-data; boundary={boundary}")))
    assert row == {"image": b"PNGDATA", "style": b"udnie", "meta": {"a": 1}}


def test_bad_arguments_are_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert ray_serve_local.command(action="restart") == 2
    assert ray_serve_local.command(models=["nope"]) == 2
    assert "make export NAME=nope" in capsys.readouterr().err
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "ray-serve.json").write_text(json.dumps({"pid": os.getpid()}))  # a live pid: "running"
    assert ray_serve_local.command() == 2 and "make stop ENGINE=ray" in capsys.readouterr().err
    (tmp_path / "logs" / "ray-serve.json").write_text(json.dumps({"pid": 2**22 + 1}))  # no such process
    assert ray_serve_local.command(action="stop") == 0 and not (tmp_path / "logs" / "ray-serve.json").exists()
    assert loadtest.command(engine="kubernetes") == 2
    (tmp_path / "runs" / "m" / "export").mkdir(parents=True)
    (tmp_path / "runs" / "m" / "export" / "generator.pt2").write_bytes(b"x")
    assert loadtest.command(engine="ray", runs=Path("runs"), nodes=1, node_cpus=1, min_replicas=2) == 2
    assert "--min_replicas 2 is more than the 1 replicas" in capsys.readouterr().err


def test_config_action_writes_a_deployable_config_for_a_cluster_of_your_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "m" / "export").mkdir(parents=True)
    (tmp_path / "runs" / "m" / "export" / "generator.pt2").write_bytes(b"x")
    assert ray_serve_local.command(action="config", host="0.0.0.0") == 0
    written = yaml.safe_load((tmp_path / "logs" / "ray-serve.yaml").read_text())
    ServeDeploySchema.model_validate(written)
    assert written["applications"][0]["args"]["models"] == {"m": str((tmp_path / "runs/m/export/generator.pt2").resolve())}
    assert written["http_options"]["host"] == "0.0.0.0" and "key_file.json" in capsys.readouterr().out
    assert not (tmp_path / "logs" / "ray-serve.json").exists()  # nothing started


def test_a_node_kill_needs_worker_nodes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "m" / "export").mkdir(parents=True)
    (tmp_path / "runs" / "m" / "export" / "generator.pt2").write_bytes(b"x")
    assert loadtest.command(engine="ray", nodes=0, kill_node_after=5) == 2
    assert "--kill_node_after needs worker nodes" in capsys.readouterr().err
    assert loadtest.command(engine="ray", nodes=-1) == 2
