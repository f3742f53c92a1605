"""pipeline/common/files.py: `atomic_write`, the one write-to-temp-then-rename of the project."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.common.files import atomic_write


def test_the_target_appears_only_when_the_body_returns(tmp_path: Path) -> None:
    """During the body the target is untouched (old bytes, or absent) and the temporary has the
    target's name and suffix in a hidden folder beside it; afterwards the target holds the new bytes
    and nothing else is left in the folder."""
    target = tmp_path / "sub" / "model.pt2"
    with atomic_write(target) as tmp:
        assert tmp.name == "model.pt2" and tmp.parent.parent == target.parent and tmp.parent.name.startswith(".")
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    target.write_bytes(b"old")
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"newer")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"newer"
    assert [p.name for p in target.parent.iterdir()] == ["model.pt2"]


@pytest.mark.parametrize("existing", [None, b"old"])
def test_a_body_that_raises_leaves_no_partial_file_and_no_temporary(tmp_path: Path, existing: bytes | None) -> None:
    """Half written then an error: the target keeps its old bytes (or stays absent), no temporary is
    left, and the error reaches the caller unchanged (KeyboardInterrupt too)."""
    target = tmp_path / "shard.tar"
    if existing is not None:
        target.write_bytes(existing)
    for error in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_write(target) as tmp:
                tmp.write_bytes(b"half a sha")
                raise error
        assert (target.read_bytes() if target.exists() else None) == existing
        assert [p.name for p in tmp_path.iterdir()] == ([] if existing is None else ["shard.tar"])


def test_a_body_that_deletes_the_temporary_publishes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "empty.tar"
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"")
        tmp.unlink()
    assert list(tmp_path.iterdir()) == []


def test_a_folder_gets_its_files_only_when_all_are_written(tmp_path: Path) -> None:
    """folder=True: the files appear in the (possibly existing) folder after the body, none when it
    raises; files already there and not rewritten stay."""
    dst = tmp_path / "frames"
    with atomic_write(dst, folder=True) as tmp:
        assert tmp.is_dir() and tmp.name == "frames"
        (tmp / "a.png").write_bytes(b"a")
        (tmp / "b.png").write_bytes(b"b")
        assert not dst.exists()
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "b.png"]
    with pytest.raises(ValueError):
        with atomic_write(dst, folder=True) as tmp:
            (tmp / "a.png").write_bytes(b"A")
            (tmp / "c.png").write_bytes(b"c")
            raise ValueError("frame 3 cannot be decoded")
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == {"a.png": b"a", "b.png": b"b"}
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]
