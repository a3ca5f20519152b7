"""Scan a generic dataset: an images folder and a masks folder matched by name patterns, classes from a CSV.

A pattern is a file name with one `{id}` (the part that pairs an image with its masks) and optional `*`
wildcards: images `case_{id}.png` with masks `mask_{id}.png` pair `case_0001.png` with `mask_0001.png`;
masks `{id}_mask*.png` gives an image all its `<name>_mask*.png` files (their union is the mask).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from mgcc.data.busi import is_png
from mgcc.data.records import DEFAULT_CLASS, KNOWN_CLASSES, Problem, SourceCase, case_id, duplicate_id_problems


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a file-name pattern with exactly one `{id}` and optional `*` wildcards."""
    if pattern.count("{id}") != 1:
        raise ValueError(f"pattern '{pattern}' must contain '{{id}}' exactly once")
    parts = [".*" if piece == "*" else re.escape(piece) for piece in re.split(r"(\*)", pattern.replace("{id}", "\0"))]
    return re.compile("".join(parts).replace("\0", "(?P<id>.+?)"), re.IGNORECASE)


def _pngs(folder: Path) -> tuple[list[Path], list[Problem]]:
    if not folder.is_dir():
        return [], [Problem(folder, "folder not found")]
    files = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    problems = [Problem(path, "not a PNG file; ignored", fatal=False) for path in files if not is_png(path)]
    pngs = [path for path in files if is_png(path)]
    if not pngs:
        problems.append(Problem(folder, "empty folder: no PNG files"))
    return pngs, problems


def _match(paths: list[Path], pattern: str, kind: str) -> tuple[dict[str, list[Path]], list[Problem]]:
    regex = pattern_regex(pattern)
    matched: dict[str, list[Path]] = {}
    problems = []
    for path in paths:
        found = regex.fullmatch(path.name)
        if found is None:
            problems.append(Problem(path, f"{kind} name does not match the {kind} pattern '{pattern}'"))
        else:
            matched.setdefault(found["id"], []).append(path)
    return matched, problems


def read_classes(csv_path: Path) -> tuple[dict[str, str], dict[str, str], list[Problem]]:
    """Class per image stem from a CSV with columns `image` (file name or stem) and `class`.

    Returns the valid classes, every listed name by stem (valid or not) and the problems found.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return {}, {}, [Problem(csv_path, f"cannot read class CSV ({error})")]
    if not rows or not {"image", "class"} <= set(rows[0]):
        return {}, {}, [Problem(csv_path, "class CSV needs a header with columns 'image' and 'class' and at least one row")]
    classes: dict[str, str] = {}
    listed: dict[str, str] = {}
    problems = []
    for line, row in enumerate(rows, start=2):
        name, label = (row["image"] or "").strip(), (row["class"] or "").strip()
        stem = Path(name).stem
        if stem in listed:
            problems.append(Problem(f"{csv_path}:{line}", f"image '{name}' is listed more than once"))
            continue
        listed[stem] = name
        if label in KNOWN_CLASSES:
            classes[stem] = label
        else:
            problems.append(Problem(f"{csv_path}:{line}", f"unknown class '{label}' (expected one of: {', '.join(KNOWN_CLASSES)})"))
    return classes, listed, problems


def scan_folders(
    images_dir: Path,
    masks_dir: Path,
    image_pattern: str = "{id}.png",
    mask_pattern: str = "{id}.png",
    classes_csv: Path | None = None,
) -> tuple[list[SourceCase], list[Problem]]:
    """All cases of a generic dataset (sorted by id) and the problems found in its files and CSV."""
    image_files, problems = _pngs(images_dir)
    mask_files, mask_problems = _pngs(masks_dir)
    images, image_problems = _match(image_files, image_pattern, "image")
    masks, unmatched_masks = _match(mask_files, mask_pattern, "mask")
    problems += mask_problems + image_problems + unmatched_masks
    for key, paths in sorted(images.items()):
        if len(paths) > 1:
            problems.append(Problem(paths[0], f"images {', '.join(path.name for path in paths)} share the pattern id '{key}'"))
    problems += [Problem(path, "mask without image") for key in sorted(set(masks) - set(images)) for path in masks[key]]
    problems += [Problem(images[key][0], "image without mask") for key in sorted(set(images) - set(masks))]
    classes, listed, csv_problems = read_classes(classes_csv) if classes_csv else ({}, {}, [])
    problems += csv_problems
    cases = []
    for key in sorted(set(images) & set(masks)):
        image = images[key][0]
        if classes_csv is None:
            cases.append(SourceCase(case_id(image.stem), DEFAULT_CLASS, image, tuple(sorted(masks[key]))))
        elif image.stem in classes:
            cases.append(SourceCase(case_id(image.stem), classes[image.stem], image, tuple(sorted(masks[key]))))
        elif image.stem not in listed:
            problems.append(Problem(image, f"no class for this image in {classes_csv}"))
    if classes_csv and listed:
        present = {path.stem for paths in images.values() for path in paths}
        problems += [Problem(classes_csv, f"lists '{listed[stem]}', which is not an image in {images_dir}") for stem in sorted(set(listed) - present)]
    return sorted(cases, key=lambda case: case.id), problems + duplicate_id_problems(cases)
