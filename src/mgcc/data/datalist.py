"""Datalist (MONAI decathlon style) and deterministic JSON writing."""

from __future__ import annotations

import json
from pathlib import Path

from mgcc.data.records import DatasetError, Problem
from mgcc.data.split import TRAIN, Assignment

SECTIONS = ("training", "unlabeled", "validation", "test")


def image_path(case_id: str) -> str:
    return f"images/{case_id}.png"


def label_path(case_id: str) -> str:
    return f"labels/{case_id}.png"


def section_of(assignment: Assignment) -> str:
    if assignment.split == TRAIN:
        return "training" if assignment.labeled else "unlabeled"
    return assignment.split


def build_datalist(classes: dict[str, str], assignments: dict[str, Assignment]) -> dict[str, list[dict[str, str]]]:
    """Sections of entries sorted by id; paths relative to the prepared folder; `unlabeled` has no label."""
    datalist: dict[str, list[dict[str, str]]] = {section: [] for section in SECTIONS}
    for case_id in sorted(assignments):
        section = section_of(assignments[case_id])
        entry = {"image": image_path(case_id), "class": classes[case_id]}
        if section != "unlabeled":
            entry["label"] = label_path(case_id)
        datalist[section].append(entry)
    return datalist


def dumps(data: object) -> str:
    """JSON text that is identical for identical data on any machine: sorted keys, indent 2, ASCII, final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def write_json(path: Path, data: object) -> None:
    Path(path).write_text(dumps(data), encoding="utf-8", newline="\n")


def read_json(path: Path) -> object:
    """A JSON file that may have been written or edited by hand (a `datalist.json`, a `manifest.json`).

    A syntax error is one `DatasetError` line naming the file, line and column (`file:line:column: ...`), and so
    is a file that cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError([Problem(path, f"cannot read this JSON file ({error})")]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(
            [
                Problem(
                    f"{path}:{error.lineno}:{error.colno}",
                    f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}",
                )
            ]
        ) from None
