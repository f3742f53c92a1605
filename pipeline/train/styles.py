"""Which style images a run trains on: `--model.style_image` names one image, a comma-separated list,
or a folder; a style is called by its file stem (or the scikit-image name of `skimage:<name>`)."""
from __future__ import annotations

from pathlib import Path

from pipeline.common.image_sources import SKIMAGE, image_exists, image_files, style_name


def style_specs(spec: str | Path) -> list[str]:
    """The style images of `spec`: a file or skimage:<name>, a comma-separated list of them, or a folder
    (`image_files`: its images by suffix, sorted, not recursive). A clear error for anything missing, an
    image-less folder or two styles with the same name."""
    text = str(spec).strip()
    if not text:
        raise ValueError("no style image given: pass a file, skimage:<name>, a comma-separated list or a folder")
    items = [part.strip() for part in text.split(",")]
    if any(not part for part in items):
        raise ValueError(f"style list {text!r} has an empty entry")
    # the shell expands only the first ~ of `STYLE=~/a.jpg,~/b.jpg`: expand the others here
    items = [item if item.startswith(SKIMAGE) else str(Path(item).expanduser()) for item in items]
    specs: list[str] = []
    for item in items:
        if not item.startswith(SKIMAGE) and Path(item).is_dir():
            specs.extend(str(p) for p in image_files(item))
        elif image_exists(item):
            specs.append(item)
        else:
            raise FileNotFoundError(f"style image {item} does not exist")
    names = [style_name(s) for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several style images are named {', '.join(duplicates)}: a style is called by its file stem, "
                         "so the stems must differ")
    return specs
