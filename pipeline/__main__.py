"""`python -m pipeline <command>`: LightningCLI's training verbs plus the project's tools.

Every tool's options are the parameters of its module's `command()` function, read by
jsonargparse from the signature and docstring, so `python -m pipeline <tool> --help` and the
code cannot disagree. Options are spelled as in the signature (`--max_side`, or `--max-side`); lists as
`--iters '[50,100]'`; every tool also takes `--config FILE` (YAML of its options).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Callable

# command → the module whose `command()` implements it, in pipeline order
TOOLS = {
    "shards": "pipeline.data.shards",
    "sample-data": "pipeline.data.builtin_photos",
    "vgg-weights": "pipeline.loss.vgg_weights",
    "export": "pipeline.export.exporter",
    "archive": "pipeline.export.archive",
    "import": "pipeline.export.import_command",
    "package": "pipeline.export.package_command",
    "stylize": "pipeline.tools.stylize",
    "describe": "pipeline.tools.describe",
    "web": "pipeline.tools.web",
    "evaluate": "pipeline.quality.evaluate",
    "gatys": "pipeline.quality.gatys",
    "ablation": "pipeline.quality.ablation",
    "figures": "pipeline.quality.figures",
    "loadtest": "pipeline.ops.loadtest",
    "ray-serve": "pipeline.ops.ray_serve_local",
    "grpc-predict": "pipeline.ops.grpc_client",
    "demo": "pipeline.ops.demo",
}
TRAINING = ("fit", "validate", "test", "predict")
# packages of the optional extras (pyproject.toml) → the extra that installs them
EXTRAS = {"grpc": "test", "onnxruntime": "onnx", "onnxscript": "onnx", "av": "video", "ray": "serve"}


class MissingExtra(RuntimeError):
    """A tool needs a package of an optional extra that is not installed."""


def tool(name: str) -> Callable[..., int]:
    """The `command()` function of a tool."""
    try:
        return importlib.import_module(TOOLS[name]).command
    except ModuleNotFoundError as e:
        if e.name not in EXTRAS:
            raise
        raise MissingExtra(f"`python -m pipeline {name}` needs {e.name}: pip install 'instyle[{EXTRAS[e.name]}]' "
                           "(`make install` installs every extra)") from None


def summary(name: str) -> str:
    """The first line of a tool's `command()` docstring, read from its source: listing the commands
    imports none of them (nor their optional packages)."""
    spec = importlib.util.find_spec(TOOLS[name])
    tree = ast.parse(Path(spec.origin).read_text()) if spec and spec.origin else ast.Module(body=[], type_ignores=[])
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "command":
            return (ast.get_docstring(node) or "").strip().splitlines()[0]
    return ""


def usage() -> str:
    """The command list, each with the first line of its docstring."""
    lines = [__doc__.split("\n")[0], "", "  fit|validate|test|predict  LightningCLI training, e.g. "
             "`fit --config pipeline/train/configs/cpu.yaml --model.style_image=art.jpg`"]
    for name in TOOLS:
        lines.append(f"  {name:26s} {summary(name)}")
    lines += ["", "`python -m pipeline <command> --help` gives a command's options."]
    return "\n".join(lines)


OPTION = re.compile(r"--[a-z][a-z0-9_-]*(?==|$)")


def dashes_to_underscores(args: list[str]) -> list[str]:
    """`--preserve-color` → `--preserve_color` (the name jsonargparse gives the parameter), so either
    spelling of a tool's option works; values, and anything that is not an option name, are kept."""
    out = []
    for arg in args:
        match = OPTION.match(arg)
        out.append(match.group(0).replace("-", "_").replace("__", "--", 1) + arg[match.end():] if match else arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a tool or to LightningCLI; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    cmd, rest = args[0], args[1:]
    if cmd in TOOLS:
        from jsonargparse import auto_cli

        try:
            command = tool(cmd)
        except MissingExtra as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        # Tools return an exit code (0 = success) so `make` sees failures.
        return int(auto_cli(command, args=dashes_to_underscores(rest), prog=f"python -m pipeline {cmd}") or 0)
    if cmd not in TRAINING:
        print(f"unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from pipeline.train.cli import run_cli

    run_cli(args if argv is not None else None)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
