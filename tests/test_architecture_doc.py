"""docs/architecture.md: its module map is the docstrings' (regenerated, not hand-kept), and it names every
module of the tree; the README stays a front door whose links resolve."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("module_map", ROOT / "scripts" / "module_map.py")
module_map = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module_map)


def test_module_map_is_current():
    assert module_map.main(["--check"]) == 0, "run `python scripts/module_map.py`"


def test_module_map_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for folder in module_map.FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name != "__init__.py" or path.parent.parent.name == "pipeline" or path.parent.name == folder:
                assert f"`{path.relative_to(ROOT)}`" in text, path


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), target
