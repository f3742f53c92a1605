"""pipeline/train/styles.py: which images a run trains on, and the names styles go by."""

from pathlib import Path

import pytest

from pipeline.train.styles import style_name, style_specs

from train_helpers import touch


# ----------------------------------------------------------------------------------------------
# styles.py

def test_style_specs_one_file_one_skimage_name_and_a_list_with_spaces(tmp_path: Path) -> None:
    """A file, `skimage:<name>` and a comma list (spaces around entries stripped) come back in order."""
    a, b = touch(tmp_path / "a.png"), touch(tmp_path / "b.jpg")
    assert style_specs(a) == [str(a)]
    assert style_specs("  skimage:brick ") == ["skimage:brick"]
    assert style_specs(f" {b} , skimage:grass,{a}") == [str(b), "skimage:grass", str(a)]


def test_style_specs_expands_every_tilde_of_a_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell expands only the first ~ of `STYLE=~/a.png,~/b.png`: the others are expanded here."""
    monkeypatch.setenv("HOME", str(tmp_path))
    a, b = touch(tmp_path / "a.png"), touch(tmp_path / "b.png")
    assert style_specs("~/a.png,~/b.png") == [str(a), str(b)]


def test_style_specs_of_a_folder_are_its_images_by_suffix_sorted_not_recursive(tmp_path: Path) -> None:
    """A folder gives its image files (suffix case-insensitive), sorted by name; other files and
    subfolders (even with images inside) are left out."""
    folder = tmp_path / "styles"
    names = ["zebra.PNG", "b.jpeg", "a.webp", "C.tif", "m.gif", "k.bmp", "j.jpg", "t.tiff"]
    for name in names:
        touch(folder / name)
    touch(folder / "notes.txt")
    touch(folder / "README")
    touch(folder / "nested" / "deep.png")
    (folder / "dir.png").mkdir()  # a folder named like an image is not one
    expected = [str(folder / n) for n in sorted(names)]
    assert style_specs(folder) == expected
    assert [style_name(s) for s in style_specs(folder)] == [n.rsplit(".", 1)[0] for n in sorted(names)]
    # a folder and a file in one list: the folder's images in place
    extra = touch(tmp_path / "extra.png")
    assert style_specs(f"{extra},{folder}") == [str(extra), *expected]


@pytest.mark.parametrize("spec,error,message", [
    ("", ValueError, "no style image given"),
    ("   ", ValueError, "no style image given"),
    ("{a},,{a}", ValueError, "has an empty entry"),
    ("{a},", ValueError, "has an empty entry"),
    ("{missing}", FileNotFoundError, "missing.png does not exist"),
    ("{a},{missing}", FileNotFoundError, "missing.png does not exist"),
    ("skimage:no_such_image", FileNotFoundError, "skimage:no_such_image does not exist"),
    ("{empty}", FileNotFoundError, "has no images (.bmp"),
    ("{a},{other_a}", ValueError, "several style images are named a"),
    ("{brick},skimage:brick", ValueError, "several style images are named brick"),
], ids=["empty", "blank", "empty-entry", "trailing-comma", "missing", "missing-in-list", "missing-skimage",
        "folder-without-images", "same-stem", "same-name-as-skimage"])
def test_style_specs_refuse_with_a_clear_message(tmp_path: Path, spec: str, error: type, message: str) -> None:
    """Empty specs or entries, missing files or skimage names, an image-less folder and two styles with
    one name (they would share a TensorBoard tag and an X-Style name) are refused, saying which."""
    a = touch(tmp_path / "a.png")
    other_a = touch(tmp_path / "other" / "a.jpg")
    brick = touch(tmp_path / "brick.png")
    empty = tmp_path / "empty"
    touch(empty / "only.txt")
    text = spec.format(a=a, other_a=other_a, brick=brick, empty=empty, missing=tmp_path / "missing.png")
    with pytest.raises(error) as info:
        style_specs(text)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["download_all", "lbp_frontal_face_cascade_filename"])
def test_style_specs_refuse_a_skimage_function_that_is_not_an_image(name: str) -> None:
    """`skimage:<name>` must name an image scikit-image ships, not any function of skimage.data."""
    with pytest.raises((ValueError, FileNotFoundError)):
        style_specs(f"skimage:{name}")


def test_style_name_is_the_file_stem_or_the_skimage_name() -> None:
    """The name a style goes by: the stem (last suffix only) of a path, the name after `skimage:`."""
    assert style_name("skimage:hubble_deep_field") == "hubble_deep_field"
    assert style_name("/x/y/starry.night.jpg") == "starry.night"
    assert style_name(Path("rel/mosaic.PNG")) == "mosaic"
