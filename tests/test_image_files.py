"""pipeline/common/image_sources.py: `image_files`, the one lister of a folder's images (the shard
writer, `evaluate`, style folders, `stylize`, frame folders and the benchmarks use it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.common.image_codec import IMAGE_SUFFIXES
from pipeline.common.image_sources import image_files
from train_helpers import touch


def test_images_by_suffix_any_case_sorted_by_name_and_not_recursive(tmp_path: Path) -> None:
    """Every suffix of IMAGE_SUFFIXES, upper or lower case; other files, folders named like images and
    subfolders' images left out; byte-wise name order (upper case first)."""
    names = [f"img{i}{s.upper() if i % 2 else s}" for i, s in enumerate(IMAGE_SUFFIXES)] + ["Zeta.png"]
    for name in names:
        touch(tmp_path / name)
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "png")
    touch(tmp_path / "sub" / "deep.jpg")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in image_files(tmp_path)] == sorted(names)
    assert all(p.parent == tmp_path for p in image_files(tmp_path))


def test_recursive_takes_subfolders_sorted_by_path(tmp_path: Path) -> None:
    for rel in ("b.jpg", "a/z.png", "a-b/c.png", "a/sub/y.webp", "a/skip.txt"):
        touch(tmp_path / rel)
    got = [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path, recursive=True)]
    assert got == ["a/sub/y.webp", "a/z.png", "a-b/c.png", "b.jpg"]  # by path parts: a/… before a-b/…


def test_natural_order_numbers_frames_as_numbers(tmp_path: Path) -> None:
    """natural: frame2 before frame10, case-insensitive, digit runs anywhere in the name."""
    names = ["f10.png", "f2.PNG", "F1.jpg", "a1b10.webp", "a1b9.bmp"]
    for name in names:
        touch(tmp_path / name)
    assert [p.name for p in image_files(tmp_path, natural=True)] == ["a1b9.bmp", "a1b10.webp", "F1.jpg", "f2.PNG", "f10.png"]
    assert [p.name for p in image_files(tmp_path)] == ["F1.jpg", "a1b10.webp", "a1b9.bmp", "f10.png", "f2.PNG"]


def test_a_missing_folder_or_one_without_images_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folder .*nope does not exist"):
        image_files(tmp_path / "nope")
    touch(tmp_path / "file.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_files(tmp_path / "file.png")  # a file is not a folder
    touch(tmp_path / "empty" / "readme.txt")
    touch(tmp_path / "empty" / "sub" / "deep.png")
    with pytest.raises(FileNotFoundError, match=r"empty has no images \(\.bmp, "):
        image_files(tmp_path / "empty")
    assert [p.name for p in image_files(tmp_path / "empty", recursive=True)] == ["deep.png"]
