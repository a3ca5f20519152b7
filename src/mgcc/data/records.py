"""Records shared by the ingestion stages: a source case, a problem found in the data, the error that carries them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Classes a dataset may declare (BUSI's); `normal` images have empty masks and are left out by default.
KNOWN_CLASSES = ("benign", "malignant", "normal")
#: Class given to every image of a generic (images/ + masks/) dataset that has no class CSV.
DEFAULT_CLASS = "lesion"


@dataclass(frozen=True)
class SourceCase:
    """One image of a raw dataset with the mask files whose union is its lesion mask."""

    id: str
    label: str
    image: Path
    masks: tuple[Path, ...]
    group: str | None = None  # e.g. the patient (a class CSV column): same group, same side of every split


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file; `fatal` problems stop `prepare`, the others are warnings."""

    path: Path | str
    reason: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DatasetError(ValueError):
    """Raised with every fatal problem of a dataset at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the dataset, nothing was written:\n{lines}")


def case_id(stem: str) -> str:
    """A file- and URL-safe id from a file stem: lower case, digit runs padded to 4, other runs -> `_`.

    `benign (1)` -> `benign_0001`, `Case 12_a` -> `case_0012_a`.
    """
    padded = re.sub(r"\d+", lambda match: match.group().zfill(4), stem.lower())
    return re.sub(r"[^a-z0-9]+", "_", padded).strip("_")


def duplicate_id_problems(cases: list[SourceCase]) -> list[Problem]:
    """One problem per id that two or more images map to."""
    by_id: dict[str, list[SourceCase]] = {}
    for case in cases:
        by_id.setdefault(case.id, []).append(case)
    problems = []
    for identifier, same in sorted(by_id.items()):
        if not identifier:
            problems += [Problem(case.image, "file name gives an empty id (no letters or digits)") for case in same]
        elif len(same) > 1:
            others = ", ".join(str(case.image) for case in same[1:])
            problems.append(Problem(same[0].image, f"id '{identifier}' is also the id of {others}; rename one"))
    return problems
