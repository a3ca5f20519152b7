"""Scan a generic dataset: an images folder and a masks folder matched by name patterns, classes from a CSV.

A pattern is a file name with one `{id}` (the part that pairs an image with its masks) and optional `*`
wildcards: images `case_{id}.png` with masks `mask_{id}.png` pair `case_0001.png` with `mask_0001.png`;
masks `{id}_mask*.png` gives an image all its `<name>_mask*.png` files (their union is the mask).
The class CSV names each image's class and, optionally, its group (e.g. the patient) in named columns.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mgcc.data.busi import is_png
from mgcc.data.records import (
    DEFAULT_CLASS,
    KNOWN_CLASSES,
    Problem,
    SourceCase,
    broken_link_problems,
    case_id,
    duplicate_id_problems,
    is_broken_link,
)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a file-name pattern with exactly one `{id}` and optional `*` wildcards."""
    if pattern.count("{id}") != 1:
        raise ValueError(f"pattern '{pattern}' must contain '{{id}}' exactly once")
    parts = [".*" if piece == "*" else re.escape(piece) for piece in re.split(r"(\*)", pattern.replace("{id}", "\0"))]
    return re.compile("".join(parts).replace("\0", "(?P<id>.+?)"), re.IGNORECASE)


#: BUSI's file names, which the MGCC reference code keeps in its `images/` + `masks/0/` layout: `benign (10).png`
BUSI_NAME = re.compile(r"(?P<label>benign|malignant|normal) \(\d+\)", re.IGNORECASE)


def busi_class(stem: str) -> str:
    """The class a BUSI-style file name gives (`benign (10)` -> benign, `Malignant (3)` -> malignant), else the
    generic class."""
    found = BUSI_NAME.fullmatch(stem)
    return found["label"].lower() if found else DEFAULT_CLASS


def _subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def masks_subfolder(masks: Path) -> Path | None:
    """The one subfolder holding the masks when `masks` holds no PNG file and exactly one folder (the MGCC reference
    code's `masks/0/`), else None."""
    if not masks.is_dir() or any(is_png(path) for path in masks.iterdir()):
        return None
    inner = _subfolders(masks)
    return inner[0] if len(inner) == 1 and any(is_png(path) for path in inner[0].iterdir()) else None


def same_folder_problem(folder: Path) -> Problem:
    """The one line for images and masks in one folder without a mask pattern: every file would be a mask.
    Names that extend another file's name (`c1_mask.png` beside `c1.png`) suggest the pattern."""
    names = sorted(path.name for path in folder.iterdir() if is_png(path)) if folder.is_dir() else []
    stems = {Path(name).stem for name in names}
    guesses = Counter(
        name[len(stem) :]
        for name in names[:50]
        for stem in stems
        if stem != Path(name).stem and name.startswith(stem) and not name[len(stem)].isalnum()
    )
    hint = f", here perhaps --mask-pattern '{{id}}{guesses.most_common(1)[0][0]}'" if guesses else ""
    return Problem(
        folder,
        f"images and masks are in the same folder: pass --image-pattern and --mask-pattern to tell them apart{hint}",
    )


#: raster formats `prepare` does not read, named when a folder holds them instead of PNG files
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def _pngs(folder: Path) -> tuple[list[Path], list[Problem]]:
    if not folder.is_dir():
        return [], [Problem(folder, "folder not found")]
    files = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    problems = broken_link_problems(files)
    problems += [
        Problem(path, "not a PNG file; ignored", fatal=False)
        for path in files
        if not is_png(path) and not is_broken_link(path)
    ]
    pngs = [path for path in files if is_png(path)]
    if not pngs:
        inner = [path.name for path in _subfolders(folder)]
        other = Counter(path.suffix.lower() for path in files if path.suffix.lower() in OTHER_IMAGE_SUFFIXES)
        if other:
            hint = (
                f" (it holds {sum(other.values())} images of another format: "
                f"{', '.join(f'{n} {suffix}' for suffix, n in other.most_common())}; `mgcc prepare` reads PNG "
                "images and masks: convert them to PNG)"
            )
        elif inner:
            hint = (
                f" (it holds the folders {', '.join(inner[:5])}{', ...' if len(inner) > 5 else ''}: name the one "
                f"to read, e.g. {folder.name}/{inner[0]})"
            )
        else:
            hint = ""
        problems.append(Problem(folder, "empty folder: no PNG files" + hint))
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


def _candidates(names: list[str], ids: set[str], samples: int = 10) -> list[str]:
    """Patterns made from file names that contain an id of the other side: `case_7_mask.png` with the id `case_7`
    gives `{id}_mask.png` (the longest id found in each of the first `samples` names)."""
    patterns = []
    for name in names[:samples]:
        found = [key for key in ids if key and key.lower() in name.lower()]
        if found:
            key = max(found, key=len)
            start = name.lower().index(key.lower())
            pattern = name[:start] + "{id}" + name[start + len(key) :]
            if pattern not in patterns:
                patterns.append(pattern)
    return patterns


def _pairs(names: list[str], pattern: str, ids: set[str]) -> int:
    regex = pattern_regex(pattern)
    return sum(1 for name in names if (found := regex.fullmatch(name)) and found["id"] in ids)


def no_pairs_problem(
    image_files: list[Path],
    mask_files: list[Path],
    images: dict[str, list[Path]],
    masks: dict[str, list[Path]],
    image_pattern: str,
    mask_pattern: str,
) -> Problem:
    """The one line for a dataset where no image pairs with a mask: the patterns used and, when the names show
    one, the pattern option that pairs most files, else an example of the options."""
    image_names, mask_names = [path.name for path in image_files], [path.name for path in mask_files]
    tried = [
        (_pairs(mask_names, pattern, set(images)), f"--mask-pattern '{pattern}' pairs", "masks")
        for pattern in _candidates(mask_names, set(images))
    ]
    tried += [
        (_pairs(image_names, pattern, set(masks)), f"--image-pattern '{pattern}' pairs", "images")
        for pattern in _candidates(image_names, set(masks))
    ]
    paired, option, kind = max(tried, key=lambda found: found[0], default=(0, "", ""))
    if paired:
        hint = f"{option} {paired} of the {len(mask_names) if kind == 'masks' else len(image_names)} {kind}"
    else:
        hint = (
            "give the patterns that pair them, e.g. --image-pattern 'case_{id}.png' --mask-pattern "
            "'case_{id}_mask.png' (a pattern is a file name with one {id} and optional * wildcards)"
        )
    return Problem(
        image_files[0].parent,
        f"no image pairs with a mask ({len(image_files)} images, {len(mask_files)} "
        f"masks; image pattern '{image_pattern}', mask pattern '{mask_pattern}'): {hint}",
    )


@dataclass(frozen=True)
class ClassColumns:
    """Names of the class CSV's columns: the image (file name or stem), its class and, optionally, its group."""

    image: str = "image"
    label: str = "class"
    group: str | None = None

    def wanted(self) -> list[str]:
        return [self.image, self.label] + ([self.group] if self.group is not None else [])


@dataclass(frozen=True)
class ClassTable:
    """What a class CSV says, by image stem: the valid classes, the non-empty groups, every listed name."""

    classes: dict[str, str]
    groups: dict[str, str]
    listed: dict[str, str]


#: how spreadsheet files begin: xlsx / ods (zip archives) and the older xls (OLE2 compound files)
SPREADSHEET_MAGIC = {
    b"PK\x03\x04": "a spreadsheet workbook (xlsx or ods, a zip archive)",
    b"\xd0\xcf\x11\xe0": "an Excel 97-2003 workbook (xls)",
}


def _spreadsheet_kind(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    return SPREADSHEET_MAGIC.get(head)


def _read_rows(csv_path: Path, columns: ClassColumns) -> tuple[list[dict[str, str]], Problem | None]:
    """The CSV's rows (header names stripped, a byte-order mark ignored), or the one problem that makes it unusable."""
    kind = _spreadsheet_kind(csv_path)
    if kind:
        return [], Problem(
            csv_path, f"class CSV is {kind}, not CSV text: save the sheet as CSV (UTF-8) and pass that file"
        )
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [(name or "").strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return [], Problem(csv_path, f"cannot read class CSV ({error})")
    if not header:
        return [], Problem(csv_path, "class CSV is empty: no header")
    missing = [name for name in columns.wanted() if name not in header]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        return [], Problem(csv_path, f"no column {names} (columns: {', '.join(header)})")
    if not rows:
        return [], Problem(csv_path, "class CSV has a header but no rows")
    return rows, None


def read_classes(csv_path: Path, columns: ClassColumns = ClassColumns()) -> tuple[ClassTable | None, list[Problem]]:
    """Class (and group) per image stem from a CSV with the given columns; `None` when the CSV cannot be used.

    An empty group cell leaves the image in a group of its own.
    """
    rows, unusable = _read_rows(csv_path, columns)
    if unusable is not None:
        return None, [unusable]
    table = ClassTable({}, {}, {})
    problems = []
    known = KNOWN_CLASSES + (DEFAULT_CLASS,)
    spellings = Counter((row[columns.label] or "").strip() for row in rows)
    # another spelling of a known class (`Benign`): one line per class, however many rows
    miscased = {
        label: sorted(
            (count, spelling)
            for spelling, count in spellings.items()
            if spelling != label and spelling.lower() == label
        )
        for label in known
    }
    for label, variants in miscased.items():
        if variants:
            named = [f"'{spelling}' ({count} rows)" for count, spelling in variants]
            if spellings[label]:
                named.append(f"'{label}' ({spellings[label]} rows)")
            problems.append(
                Problem(
                    csv_path,
                    f"classes {' and '.join(named)} differ only in case: the same class? write {label}"
                    if spellings[label]
                    else f"class {named[0]} is spelled in another case: write {label}",
                )
            )
    for line, row in enumerate(rows, start=2):
        name, label = (row[columns.image] or "").strip(), (row[columns.label] or "").strip()
        stem = Path(name).stem
        if stem in table.listed:
            problems.append(Problem(f"{csv_path}:{line}", f"image '{name}' is listed more than once"))
            continue
        table.listed[stem] = name
        group = (row[columns.group] or "").strip() if columns.group is not None else ""
        if group:
            table.groups[stem] = group
        if label in known:  # `lesion`: what a generic dataset without classes gets
            table.classes[stem] = label
        elif label.lower() not in known:  # another case of a known class: said once above
            problems.append(
                Problem(
                    f"{csv_path}:{line}",
                    f"unknown class '{label}' (expected one of: {', '.join(KNOWN_CLASSES + (DEFAULT_CLASS,))})",
                )
            )
    return table, problems


def scan_folders(
    images_dir: Path,
    masks_dir: Path,
    image_pattern: str = "{id}.png",
    mask_pattern: str = "{id}.png",
    classes_csv: Path | None = None,
    columns: ClassColumns = ClassColumns(),
    classes_from_names: bool = False,
) -> tuple[list[SourceCase], list[Problem]]:
    """All cases of a generic dataset (sorted by id) and the problems found in its files and CSV.

    Images and masks may share one folder: there, a file that matches the mask pattern is a mask, any other an image.
    Without a class CSV every image has the generic class, or with `classes_from_names` the class its BUSI-style
    name gives (`busi_class`).
    """
    image_files, problems = _pngs(images_dir)
    if images_dir.resolve() == masks_dir.resolve():
        is_mask = pattern_regex(mask_pattern).fullmatch
        mask_files, mask_problems = [path for path in image_files if is_mask(path.name)], []
        image_files = [path for path in image_files if not is_mask(path.name)]
    else:
        mask_files, mask_problems = _pngs(masks_dir)
    images, image_problems = _match(image_files, image_pattern, "image")
    masks, unmatched_masks = _match(mask_files, mask_pattern, "mask")
    problems += mask_problems + image_problems + unmatched_masks
    if image_files and mask_files and not set(images) & set(masks):
        problems.insert(0, no_pairs_problem(image_files, mask_files, images, masks, image_pattern, mask_pattern))
    for key, paths in sorted(images.items()):
        if len(paths) > 1:
            problems.append(
                Problem(paths[0], f"images {', '.join(path.name for path in paths)} share the pattern id '{key}'")
            )
    problems += [Problem(path, "mask without image") for key in sorted(set(masks) - set(images)) for path in masks[key]]
    problems += [Problem(images[key][0], "image without mask") for key in sorted(set(images) - set(masks))]
    table, csv_problems = read_classes(classes_csv, columns) if classes_csv else (None, [])
    problems += csv_problems
    if classes_csv and table is None:
        return [], problems  # the CSV cannot be used: its one problem says why, rather than one per image
    cases = []
    for key in sorted(set(images) & set(masks)):
        image, image_masks = images[key][0], tuple(sorted(masks[key]))
        if table is None:
            label = busi_class(image.stem) if classes_from_names else DEFAULT_CLASS
            cases.append(SourceCase(case_id(image.stem), label, image, image_masks))
        elif image.stem in table.classes:
            cases.append(
                SourceCase(
                    case_id(image.stem), table.classes[image.stem], image, image_masks, table.groups.get(image.stem)
                )
            )
        elif image.stem not in table.listed:
            problems.append(Problem(image, f"no class for this image in {classes_csv}"))
    if table is not None:
        present = {path.stem for paths in images.values() for path in paths}
        problems += [
            Problem(classes_csv, f"lists '{table.listed[stem]}', which is not an image in {images_dir}")
            for stem in sorted(set(table.listed) - present)
        ]
    return sorted(cases, key=lambda case: case.id), problems + duplicate_id_problems(cases)
