"""`python -m pipeline`: the command list works on a plain `pip install .` (no optional extras), and a
tool whose extra is missing says which extra to install."""
from __future__ import annotations

import subprocess
import sys

from pipeline.__main__ import TOOLS

# Makes the optional extras' packages (pyproject.toml: test, onnx, video) unimportable, as a plain install has them.
BLOCK_EXTRAS = ("import sys, importlib.abc; "
                "B = ('grpc', 'grpc_tools', 'onnxruntime', 'onnxscript', 'av', 'pytest'); "
                "F = type('Block', (importlib.abc.MetaPathFinder,), {'find_spec': staticmethod(lambda n, p=None, t=None: "
                "(_ for _ in ()).throw(ModuleNotFoundError(f'No module named {n!r}', name=n)) "
                "if n.split('.')[0] in B else None)}); "
                "sys.meta_path.insert(0, F()); sys.argv[0] = 'pipeline'; import runpy; ")


def run(*args: str) -> subprocess.CompletedProcess:
    code = BLOCK_EXTRAS + f"sys.argv[1:] = {list(args)!r}; runpy.run_module('pipeline', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_without_the_extras():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert set(TOOLS) <= listed, set(TOOLS) - listed
    assert "Stylize one image through TorchServe's gRPC inference API" in proc.stdout  # read from its source


def test_a_tool_without_its_extra_names_the_extra():
    proc = run("grpc-predict", "--help")
    assert proc.returncode == 2
    assert "needs grpc: pip install 'instyle[test]'" in proc.stderr, proc.stderr[-2000:]


def test_unknown_command_is_a_usage_error():
    proc = run("stylise")
    assert proc.returncode == 2 and "unknown command 'stylise'" in proc.stderr and "stylize" in proc.stderr
