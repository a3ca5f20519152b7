"""Scan a dataset in the BUSI layout: `<root>/<class>/<name>.png` with masks `<name>_mask.png`, `<name>_mask_<k>.png`
(also `_mask<k>`, `_mask (<k>)`)."""

from __future__ import annotations

import re
from pathlib import Path

from mgcc.data.records import (
    KNOWN_CLASSES,
    Problem,
    SourceCase,
    broken_link_problems,
    case_id,
    duplicate_id_problems,
    is_broken_link,
)

#: `<name>_mask.png` and its numbered extra masks as BUSI names them (`_mask_1`) and as copies of it rename them
#: (`_mask1`, `_mask (2)`, `_mask-2`)
MASK_NAME = re.compile(r"(?P<stem>.+?)_mask(?:[_ -]?\(?\d+\)?)?\.png", re.IGNORECASE)


def is_png(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".png"


def _busi_id(label: str, stem: str) -> str:
    identifier = case_id(stem)
    return identifier if identifier.startswith(f"{label}_") else case_id(f"{label} {stem}")


def _scan_class(folder: Path) -> tuple[list[SourceCase], list[Problem]]:
    label = folder.name
    files = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    problems = broken_link_problems(files)
    problems += [
        Problem(path, "not a PNG file; ignored", fatal=False)
        for path in files
        if not is_png(path) and not is_broken_link(path)
    ]
    pngs = [path for path in files if is_png(path)]
    if not pngs:
        return [], problems + [Problem(folder, "empty class folder: no PNG images")]
    masks: dict[str, list[Path]] = {}
    images: dict[str, Path] = {}
    for path in pngs:
        match = MASK_NAME.fullmatch(path.name)
        if match:
            masks.setdefault(match["stem"], []).append(path)
        else:
            images[path.stem] = path
    problems += [
        Problem(path, "mask without image") for stem in sorted(set(masks) - set(images)) for path in masks[stem]
    ]
    problems += [Problem(images[stem], "image without mask") for stem in sorted(set(images) - set(masks))]
    cases = [
        SourceCase(_busi_id(label, stem), label, images[stem], tuple(sorted(masks[stem])))
        for stem in sorted(set(images) & set(masks))
    ]
    return cases, problems


def scan_busi(root: Path) -> tuple[list[SourceCase], list[Problem]]:
    """All cases of a BUSI-layout dataset (sorted by id) and the problems found in its folder structure."""
    cases: list[SourceCase] = []
    problems: list[Problem] = []
    entries = sorted(path for path in Path(root).iterdir() if not path.name.startswith("."))
    problems += [Problem(path, "PNG outside a class folder: its class is unknown") for path in entries if is_png(path)]
    folders = [path for path in entries if path.is_dir()]
    names = {folder.name for folder in folders}
    for folder in folders:
        if folder.name not in KNOWN_CLASSES:
            label = folder.name.lower()
            if label in KNOWN_CLASSES and label in names:  # `Benign/` beside `benign/`
                problems.append(
                    Problem(
                        root,
                        f"class folders {folder.name} and {label} differ only in case: the same "
                        f"class? move the images of {folder.name} into {label}",
                    )
                )
            elif label in KNOWN_CLASSES:
                problems.append(
                    Problem(
                        folder, f"class folder spelled '{folder.name}': class folders are lower case, rename it {label}"
                    )
                )
            else:
                problems.append(
                    Problem(folder, f"unknown class '{folder.name}' (expected one of: {', '.join(KNOWN_CLASSES)})")
                )
            continue
        found, found_problems = _scan_class(folder)
        cases += found
        problems += found_problems
    if not folders:
        problems.append(Problem(root, f"empty folder: no class folders ({', '.join(KNOWN_CLASSES)})"))
    return sorted(cases, key=lambda case: case.id), problems + duplicate_id_problems(cases)
