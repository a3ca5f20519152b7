"""Records shared by the ingestion stages: a source case, a problem found in the data, the error that carries them."""

from __future__ import annotations

import os
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
    #: what differs from file to file (e.g. the sizes), kept out of `reason` so that many files with one reason
    #: are summarized in one line, each example with its detail
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + (f": {self.detail}" if self.detail else "")


#: more problems than this with the same reason are reported as one line: their count and the first examples
SUMMARIZE_ABOVE = 5
EXAMPLES = 3


def _summary_line(same: list[Problem]) -> str:
    """One line for many problems with one reason: the folder they share, the reason, the count, the first names."""
    paths = [str(problem.path) for problem in same]
    folder = os.path.commonpath(paths) if all(os.path.isabs(path) for path in paths) else ""
    if folder in paths:  # one file named several times
        folder = os.path.dirname(folder)
    names = [os.path.relpath(path, folder) if folder else path for path in paths[:EXAMPLES]]
    names = [f"{name} {problem.detail}" if problem.detail else name for name, problem in zip(names, same, strict=False)]
    return f"{folder or '.'}: {same[0].reason}: {len(same)} files ({', '.join(names)}, ...)"


def summarized(problems: list[Problem]) -> list[str]:
    """The problems as lines, in the order found; the problems of a reason shared by more than `SUMMARIZE_ABOVE`
    files become one line where the first of them was."""
    by_reason: dict[str, list[Problem]] = {}
    for problem in problems:
        by_reason.setdefault(problem.reason, []).append(problem)
    lines = []
    for problem in problems:
        same = by_reason[problem.reason]
        if len(same) <= SUMMARIZE_ABOVE:
            lines.append(str(problem))
        elif problem is same[0]:
            lines.append(_summary_line(same))
    return lines


class DatasetError(ValueError):
    """Raised with every fatal problem of a dataset at once (all of them in `problems`).

    The message is one line for one problem; otherwise a count and one line per problem, where more than
    `SUMMARIZE_ABOVE` problems with the same reason are summarized in one line.
    """

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = summarized(self.problems)
        if len(lines) == 1:
            super().__init__(f"{lines[0]} (nothing was written)")
        else:
            listed = "\n".join(f"  {line}" for line in lines)
            super().__init__(f"{len(self.problems)} problem(s) in the dataset, nothing was written:\n{listed}")


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target does not exist."""
    return path.is_symlink() and not path.exists()


def broken_link_problems(paths: list[Path]) -> list[Problem]:
    """One fatal problem per broken link, naming the link and where it points: its file is missing, not ignorable."""
    return [
        Problem(path, f"broken link: its target {os.readlink(path)} does not exist")
        for path in paths
        if is_broken_link(path)
    ]


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
