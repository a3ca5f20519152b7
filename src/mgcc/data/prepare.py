"""`mgcc prepare`: check a raw dataset, write a normalized copy, a manifest and a split datalist.

Output (docs/architecture.md, "Prepared dataset"): `<out>/images/<id>.png` (8-bit grayscale),
`<out>/labels/<id>.png` (0/255), `<out>/manifest.json`, `<out>/datalist.json`. Nothing is written unless
every file passed its checks.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from mgcc.data.busi import scan_busi
from mgcc.data.datalist import SECTIONS, build_datalist, image_path, label_path, section_of, write_json
from mgcc.data.folders import ClassColumns, scan_folders
from mgcc.data.records import DatasetError, Problem, SourceCase
from mgcc.data.split import SplitItem, assign_splits, duplicate_groups, split_groups
from mgcc.data.validate import CheckedCase, check_case, load_case

MANIFEST_FORMAT = "mgcc-prepared-dataset/1"
OUTPUT_NAMES = ("images", "labels", "manifest.json", "datalist.json")
LAYOUTS = ("auto", "busi", "folders")
PNG_COMPRESS_LEVEL = 1  # zlib level; Pillow's default 6 made BUSI twice as slow to prepare for 12% smaller files


def _resolve_in(source: Path, folder: str | Path | None, default: str) -> Path:
    path = Path(folder) if folder is not None else Path(default)
    return (path if path.is_absolute() else source / path).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _pick_layout(source: Path, layout: str, folder_options: bool) -> str:
    if layout not in LAYOUTS:
        raise DatasetError([Problem(source, f"unknown layout '{layout}' (expected one of: {', '.join(LAYOUTS)})")])
    if layout == "busi" and folder_options:
        raise DatasetError([Problem(source, "images/masks folders, patterns and a class CSV apply to the 'folders' layout only")])
    if layout != "auto":
        return layout
    if folder_options or ((source / "images").is_dir() and (source / "masks").is_dir()):
        return "folders"
    return "busi"


def _class_columns(source: Path, classes_csv: str | Path | None, id_column: str, class_column: str,
                   group_column: str | None) -> ClassColumns:
    """The class CSV's column names; naming a column without a CSV, or grouping by the id or class column, is refused."""
    columns = ClassColumns(str(id_column), str(class_column), None if group_column is None else str(group_column))
    if not classes_csv:
        named = [option for option, given in (("--id-column", columns.image != ClassColumns.image),
                                              ("--class-column", columns.label != ClassColumns.label),
                                              ("--group-column", columns.group is not None)) if given]
        if named:
            verb = "names a column" if len(named) == 1 else "name columns"
            raise DatasetError([Problem(source, f"{', '.join(named)} {verb} of the class CSV: give the CSV with --classes")])
    elif columns.group in (columns.image, columns.label):
        raise DatasetError([Problem(source, f"the group column '{columns.group}' must differ from the id and class columns")])
    return columns


def _output_problems(out: Path, read_from: list[Path]) -> list[Problem]:
    problems = [
        Problem(out, f"output folder must not be inside or equal to the source {folder}, nor contain it")
        for folder in read_from
        if _inside(out, folder) or _inside(folder, out)
    ]
    if out.is_dir():
        foreign = sorted(path.name for path in out.iterdir() if path.name not in OUTPUT_NAMES)
        if foreign:
            problems.append(Problem(out, f"output folder holds files that are not a prepared dataset ({', '.join(foreign[:5])}); choose an empty folder"))
    elif out.exists():
        problems.append(Problem(out, "output path exists and is not a folder"))
    return problems


def _scan(
    source: Path,
    layout: str,
    images_dir: str | Path | None,
    masks_dir: str | Path | None,
    image_pattern: str | None,
    mask_pattern: str | None,
    classes_csv: str | Path | None,
    columns: ClassColumns,
) -> tuple[list[SourceCase], list[Problem], list[Path]]:
    """Cases, structural problems and the folders that are read, for the chosen layout."""
    if layout == "busi":
        cases, problems = scan_busi(source)
        return cases, problems, [source]
    images = _resolve_in(source, images_dir, "images")
    masks = _resolve_in(source, masks_dir, "masks")
    csv_path = _resolve_in(source, classes_csv, "") if classes_csv else None
    cases, problems = scan_folders(images, masks, image_pattern or "{id}.png", mask_pattern or "{id}.png", csv_path, columns)
    return cases, problems, [source, images, masks]


def _write_case(case: SourceCase, out: Path) -> None:
    image, mask, _ = load_case(case)
    Image.fromarray(image).save(out / image_path(case.id), format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / label_path(case.id), format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _relative(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root).as_posix() if _inside(path.resolve(), root) else str(path.resolve())


def _record(checked: CheckedCase, source: Path, section: str) -> dict:
    case = checked.case
    return {
        "id": case.id,
        "class": case.label,
        "section": section,
        "image": image_path(case.id),
        "label": label_path(case.id),
        "source_image": _relative(case.image, source),
        "source_masks": [_relative(mask, source) for mask in case.masks],
        "size": {"height": checked.height, "width": checked.width},
        "lesion_fraction": checked.lesion_fraction,
        "sha256": checked.sha256,
        "pixel_sha256": checked.pixel_sha256,
        "group": case.group,
    }


def _section_counts(datalist: dict) -> dict[str, dict[str, int]]:
    counts = {}
    for section in SECTIONS:
        per_class = Counter(entry["class"] for entry in datalist[section])
        counts[section] = dict(sorted(per_class.items())) | {"total": len(datalist[section])}
    return counts


def prepare_dataset(
    source: Path,
    out: Path,
    *,
    layout: str = "auto",
    labeled_fraction: float = 0.125,
    seed: int = 0,
    include_normal: bool = False,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
    image_pattern: str | None = None,
    mask_pattern: str | None = None,
    classes_csv: str | Path | None = None,
    id_column: str = "image",
    class_column: str = "class",
    group_column: str | None = None,
) -> dict:
    """Check `source`, then write the prepared dataset to `out`; return a summary with counts per split/class.

    `classes_csv` names each image's class in columns `id_column` and `class_column`; with `group_column`
    (e.g. the patient) every group stays on one side of every split, merged with the exact-duplicate groups.
    Raises `DatasetError` listing every fatal problem (nothing is written then); warnings are returned in
    the summary and recorded in the manifest.
    """
    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.is_dir():
        raise DatasetError([Problem(source, "source folder not found")])
    if not 0.0 < labeled_fraction <= 1.0:
        raise DatasetError([Problem(source, f"labeled fraction must be in (0, 1], got {labeled_fraction}")])
    folder_options = any(option is not None for option in (images_dir, masks_dir, image_pattern, mask_pattern, classes_csv))
    layout = _pick_layout(source, layout, folder_options)
    columns = _class_columns(source, classes_csv, id_column, class_column, group_column)
    try:
        all_cases, problems, read_from = _scan(source, layout, images_dir, masks_dir, image_pattern, mask_pattern, classes_csv, columns)
    except ValueError as error:  # a malformed pattern
        raise DatasetError([Problem(source, str(error))]) from error
    problems = _output_problems(out, read_from) + problems
    excluded = Counter(case.label for case in all_cases if case.label == "normal" and not include_normal)
    cases = [case for case in all_cases if include_normal or case.label != "normal"]
    if not cases and not any(problem.fatal for problem in problems):
        problems.append(Problem(source, "no images to prepare"))
    checked: list[CheckedCase] = []
    for case in cases:
        facts, case_problems = check_case(case)
        problems += case_problems
        if facts is not None:
            checked.append(facts)
    fatal = [problem for problem in problems if problem.fatal]
    if fatal:
        raise DatasetError(fatal)
    warnings = [problem for problem in problems if not problem.fatal]

    items = [SplitItem(facts.case.id, facts.case.label, facts.pixel_sha256, facts.case.group) for facts in checked]
    assignments = assign_splits(items, seed=seed, labeled_fraction=labeled_fraction)
    datalist = build_datalist({facts.case.id: facts.case.label for facts in checked}, assignments)
    duplicates = [[item.id for item in group] for group in duplicate_groups(items) if len(group) > 1]
    together = [group for group in split_groups(items) if len(group) > 1]
    summary = {
        "images": len(checked),
        "classes": dict(sorted(Counter(facts.case.label for facts in checked).items())),
        "excluded": dict(excluded),
        "multi_mask_images": sum(len(facts.case.masks) > 1 for facts in checked),
        "duplicate_groups": duplicates,
        "group_column": columns.group,
        "multi_image_groups": len(together),
        "images_in_multi_image_groups": sum(len(group) for group in together),
        "sections": _section_counts(datalist),
        "warnings": len(warnings),
    }
    # written next to `out` first and moved into place when complete: a run stopped midway keeps the previous dataset
    staging, replaced = out.parent / f".{out.name}.incoming", out.parent / f".{out.name}.replaced"
    for folder in (staging, replaced):
        shutil.rmtree(folder, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    (staging / "labels").mkdir()
    for facts in checked:
        _write_case(facts.case, staging)
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": str(source),
        "layout": layout,
        "settings": {"seed": seed, "labeled_fraction": labeled_fraction, "include_normal": include_normal,
                     "group_column": columns.group},
        "summary": summary,
        "warnings": [{"file": _relative(Path(problem.path), source), "reason": problem.reason} for problem in warnings],
        "images": [_record(facts, source, section_of(assignments[facts.case.id])) for facts in checked],
    }
    write_json(staging / "manifest.json", manifest)
    write_json(staging / "datalist.json", datalist)
    out.mkdir(parents=True, exist_ok=True)
    replaced.mkdir()
    for name in OUTPUT_NAMES:
        if (out / name).exists():
            (out / name).rename(replaced / name)
        (staging / name).rename(out / name)
    shutil.rmtree(staging)
    shutil.rmtree(replaced)
    return summary | {"out": str(out), "warning_list": [str(problem) for problem in warnings]}


def _print_warnings(warnings: list[str]) -> None:
    by_reason: dict[str, list[str]] = {}
    for warning in warnings:
        path, _, reason = warning.rpartition(": ")
        by_reason.setdefault(reason, []).append(path)
    for reason, paths in by_reason.items():
        examples = ", ".join(Path(path).name for path in paths[:3]) + (", ..." if len(paths) > 3 else "")
        print(f"warning: {reason}: {len(paths)} file(s) ({examples})", file=sys.stderr)


def print_summary(summary: dict) -> None:
    """The split counts per section and class, as a small table."""
    classes = list(summary["classes"])
    print(f"prepared {summary['images']} images into {summary['out']}")
    if summary["excluded"]:
        print("excluded: " + ", ".join(f"{count} {label} (use --include-normal)" for label, count in summary["excluded"].items()))
    print(f"multi-mask images merged: {summary['multi_mask_images']}; duplicate groups kept together: {summary['duplicate_groups']}")
    if summary["group_column"] is not None:
        print(f"groups by column '{summary['group_column']}' (merged with duplicates): {summary['multi_image_groups']} "
              f"multi-image groups ({summary['images_in_multi_image_groups']} images) kept together")
    print(f"{'section':<12}" + "".join(f"{label:>11}" for label in classes) + f"{'total':>8}")
    for section, counts in summary["sections"].items():
        print(f"{section:<12}" + "".join(f"{counts.get(label, 0):>11}" for label in classes) + f"{counts['total']:>8}")


def prepare(
    source: str,
    out: str,
    labeled_fraction: float | str = 0.125,
    seed: int = 0,
    include_normal: bool = False,
    layout: str = "auto",
    images: str | None = None,
    masks: str | None = None,
    image_pattern: str | None = None,
    mask_pattern: str | None = None,
    classes: str | None = None,
    id_column: str = "image",
    class_column: str = "class",
    group_column: str | None = None,
) -> None:
    """CLI `mgcc prepare SOURCE --out DIR`: check, normalize and split a dataset; exit 2 on invalid data.

    --labeled-fraction accepts 0.125 or 1/8. Generic layout: --images/--masks folders (relative to SOURCE),
    --image-pattern/--mask-pattern like 'case_{id}.png'/'mask_{id}.png', --classes CSV (columns named by
    --id-column, default image, and --class-column, default class). --group-column NAME (a column of that CSV,
    e.g. the patient): images with the same value stay on one side of every split.
    """
    started = time.perf_counter()
    try:
        summary = prepare_dataset(
            Path(source),
            Path(out),
            layout=layout,
            labeled_fraction=float(Fraction(str(labeled_fraction))),
            seed=int(seed),
            include_normal=bool(include_normal),
            images_dir=images,
            masks_dir=masks,
            image_pattern=image_pattern,
            mask_pattern=mask_pattern,
            classes_csv=classes,
            id_column=id_column,
            class_column=class_column,
            group_column=group_column,
        )
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    _print_warnings(summary["warning_list"])
    print_summary(summary)
    print(f"took {time.perf_counter() - started:.1f} s")
