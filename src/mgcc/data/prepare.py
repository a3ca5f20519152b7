"""`mgcc prepare`: check a raw dataset, write a normalized copy, a manifest and a split datalist.

Output (docs/architecture.md, "Prepared dataset"): `<out>/images/<id>.png` (8-bit grayscale),
`<out>/labels/<id>.png` (0/255), `<out>/manifest.json`, `<out>/datalist.json`. Nothing is written unless
every file passed its checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from mgcc.data.busi import scan_busi
from mgcc.data.datalist import SECTIONS, build_datalist, image_path, label_path, read_json, section_of, write_json
from mgcc.data.folders import ClassColumns, masks_subfolder, same_folder_problem, scan_folders
from mgcc.data.options import DataOptions, option_error
from mgcc.data.records import KNOWN_CLASSES, DatasetError, Problem, SourceCase
from mgcc.data.split import (
    NEAR_DUPLICATE_CORRELATION,
    SplitItem,
    assign_splits,
    duplicate_groups,
    near_duplicate_groups,
    split_groups,
)
from mgcc.data.validate import CheckedCase, check_case, load_case

MANIFEST_FORMAT = "mgcc-prepared-dataset/1"
OUTPUT_NAMES = ("images", "labels", "manifest.json", "datalist.json")
PNG_COMPRESS_LEVEL = 1  # zlib level; Pillow's default 6 made BUSI twice as slow to prepare for 12% smaller files
#: folder names that suggest masks, for the hint when a layout is not recognised
MASK_WORDS = ("mask", "label", "annot", "seg", "gt", "truth")


def labeled_fraction_option(value: object) -> float:
    """`--labeled-fraction` as a float in (0, 1]: a decimal (0.125) or a ratio (1/8); one-line `DatasetError` else."""
    text = str(value).strip()
    accepted = "a fraction in (0, 1] such as 0.125 or 1/8"
    try:
        if isinstance(value, bool):
            raise ValueError(text)
        fraction = Fraction(text)
    except (ValueError, ZeroDivisionError):
        hint = ""
        if text.endswith("%"):
            try:
                hint = f" (a percentage: for {text} give {float(Fraction(text[:-1]) / 100):g})"
            except (ValueError, ZeroDivisionError):
                pass
        raise option_error("--labeled-fraction", f"'{text}' is not {accepted}{hint}") from None
    if not 0 < fraction <= 1:
        raise option_error("--labeled-fraction", f"{text} is outside (0, 1]: give a fraction such as 0.125 or 1/8")
    return float(fraction)


def seed_option(value: object) -> int:
    """`--seed` as an int (a whole number, also given as text); one-line `DatasetError` else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        return int(str(value).strip())
    except ValueError:
        raise option_error("--seed", f"'{value}' is not a whole number (such as 0 or 42)") from None


def near_copy_option(value: object) -> float:
    """--near-copy-correlation: a number in (0, 1]; 1 groups only pixel-identical images."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise option_error("--near-copy-correlation", f"must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < number <= 1.0:
        raise option_error("--near-copy-correlation", f"must be in (0, 1], got {value!r}")
    return number


def _resolve_in(source: Path, folder: str | Path | None, default: str) -> Path:
    path = Path(folder) if folder is not None else Path(_child_folder(source, default) or default)
    return (path if path.is_absolute() else source / path).resolve()


def _child_folder(source: Path, name: str) -> str | None:
    """The name of `source`'s sub-folder called `name` in any capitalisation (`Images` for `images`), or None."""
    if (source / name).is_dir():
        return name
    found = sorted(path.name for path in source.iterdir() if path.name.lower() == name and path.is_dir())
    return found[0] if found else None


def _class_csv(classes_csv: str | Path, source: Path) -> tuple[Path, Problem | None]:
    """The class CSV's path (a relative one is read from the current folder) and the problem if it is no file."""
    given = Path(classes_csv).expanduser()
    path = (given if given.is_absolute() else Path.cwd() / given).resolve()
    if path.is_file():
        return path, None
    reason = "is a folder, not a class CSV" if path.is_dir() else "class CSV not found"
    if not given.is_absolute():
        reason += f" (a relative --classes is read from the current folder, {Path.cwd()})"
        if (source / given).is_file():
            reason += f"; did you mean --classes {(source / given).resolve()}?"
    return path, Problem(path, reason)


def _unrecognised_layout(source: Path) -> Problem | None:
    """The one problem of a source that holds neither BUSI class folders nor images/ + masks/ (None otherwise;
    an empty source is left to the BUSI scan, which says it is empty)."""
    entries = sorted(path for path in source.iterdir() if not path.name.startswith("."))
    folders = [path.name for path in entries if path.is_dir()]
    pngs = [path for path in entries if path.is_file() and path.suffix.lower() == ".png"]
    if any(name in KNOWN_CLASSES for name in folders) or not (folders or pngs):
        return None
    cased = [name for name in folders if name.lower() in KNOWN_CLASSES]
    if cased:
        several = len(cased) > 1
        return Problem(
            source,
            f"class folder{'s' * several} {', '.join(n + '/' for n in cased)}: BUSI's class "
            f"folders are lower case: rename {'them' if several else 'it'} "
            f"{', '.join(n.lower() + '/' for n in cased)}",
        )
    found = f"folders {', '.join(folders[:6])}{', ...' if len(folders) > 6 else ''}" if folders else "no folders"
    if pngs:
        found += f", {len(pngs)} PNG files at the top"
    masks = [name for name in folders if any(word in name.lower() for word in MASK_WORDS)]
    others = [name for name in folders if name not in masks]
    guess = f"; here perhaps --images {others[0]} --masks {masks[0]}" if len(masks) == 1 and len(others) == 1 else ""
    return Problem(
        source,
        f"layout not recognised: neither BUSI class folders ({'/, '.join(KNOWN_CLASSES)}/) nor "
        f"images/ and masks/ (found {found}); for other folders give --images DIR --masks DIR "
        f"[--image-pattern 'case_{{id}}.png' --mask-pattern 'case_{{id}}_mask.png']{guess}",
    )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _pick_layout(source: Path, layout: str, folder_options: bool) -> str:
    """The layout to read (`layout` is one of `options.LAYOUTS`, checked by `DataOptions`)."""
    if layout == "busi" and folder_options:
        raise DatasetError(
            [Problem(source, "images/masks folders, patterns and a class CSV apply to the 'folders' layout only")]
        )
    if layout != "auto":
        return layout
    if folder_options or (_child_folder(source, "images") and _child_folder(source, "masks")):
        return "folders"
    unrecognised = _unrecognised_layout(source)
    if unrecognised is not None:
        raise DatasetError([unrecognised])
    return "busi"


def _class_columns(source: Path, data: DataOptions) -> ClassColumns:
    """The class CSV's column names; naming a column without a CSV, or grouping by the id or class column, is
    refused."""
    columns = ClassColumns(data.id_column, data.class_column, data.group_column)
    if not data.classes:
        named = [
            option
            for option, given in (
                ("--id-column", columns.image != ClassColumns.image),
                ("--class-column", columns.label != ClassColumns.label),
                ("--group-column", columns.group is not None),
            )
            if given
        ]
        if named:
            verb = "names a column" if len(named) == 1 else "name columns"
            raise DatasetError(
                [Problem(source, f"{', '.join(named)} {verb} of the class CSV: give the CSV with --classes")]
            )
    elif columns.group in (columns.image, columns.label):
        raise DatasetError(
            [Problem(source, f"the group column '{columns.group}' must differ from the id and class columns")]
        )
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
            problems.append(
                Problem(
                    out,
                    f"output folder holds files that are not a prepared dataset ({', '.join(foreign[:5])}); "
                    "choose an empty folder",
                )
            )
    elif out.exists():
        problems.append(Problem(out, "output path exists and is not a folder"))
    return problems


def _scan(
    source: Path, layout: str, data: DataOptions, columns: ClassColumns
) -> tuple[list[SourceCase], list[Problem], list[Path]]:
    """Cases, structural problems and the folders that are read, for the chosen layout.

    The generic layout finds masks in the one subfolder of an otherwise empty masks folder (the MGCC reference
    code's `images/` + `masks/0/`); there, and wherever the masks folder is named by a number, the reference code's
    BUSI-style names give the class (`benign (10).png` is benign) unless a class CSV is given."""
    if layout == "busi":
        cases, problems = scan_busi(source)
        return cases, problems, [source]
    images = _resolve_in(source, data.images, "images")
    masks = _resolve_in(source, data.masks, "masks")
    if data.masks is None:
        masks = masks_subfolder(masks) or masks
    read_from = [source, images, masks]
    if images == masks and data.mask_pattern is None:  # every file would match the default mask pattern
        return [], [same_folder_problem(images)], read_from
    csv_path, missing = _class_csv(data.classes, source) if data.classes else (None, None)
    patterns = (data.image_pattern or "{id}.png", data.mask_pattern or "{id}.png")
    classes_from_names = masks.name.isdigit()
    if missing is not None:  # the folders are still checked; no case without its class
        return [], [missing] + scan_folders(images, masks, *patterns, None, columns)[1], read_from
    cases, problems = scan_folders(images, masks, *patterns, csv_path, columns, classes_from_names=classes_from_names)
    return cases, problems, read_from


def _write_case(case: SourceCase, out: Path, mask_threshold: float | None = None) -> None:
    image, mask, _ = load_case(case, mask_threshold)
    Image.fromarray(image).save(out / image_path(case.id), format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    Image.fromarray(mask.astype(np.uint8) * 255).save(
        out / label_path(case.id), format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )


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


def _disagreeing_duplicates(checked: list[CheckedCase], duplicates: list[list[str]]) -> list[Problem]:
    """A warning per image whose pixels repeat another's under another class or with another mask: both are kept
    (on one side of the split), but they are scored against different truths."""
    facts = {item.case.id: item for item in checked}
    problems = []
    for group in duplicates:
        first = facts[group[0]]
        for other in (facts[identifier] for identifier in group[1:]):
            differs = [
                what
                for what, same in (
                    ("class", other.case.label == first.case.label),
                    ("mask", other.mask_sha256 == first.mask_sha256),
                )
                if not same
            ]
            if differs:
                problems.append(
                    Problem(
                        other.case.image,
                        f"same pixels as {first.case.image.name} with another {' and '.join(differs)}",
                        fatal=False,
                    )
                )
    return problems


def _check_splits(source: Path, items: list[SplitItem], assignments: dict) -> None:
    """Refuse a split with no training, validation or test image: a MONAI training run needs training and
    validation images, `mgcc run` scores on test (`assign_splits` gives each split a group when it can)."""
    counts = Counter(assignment.split for assignment in assignments.values())
    groups = len(split_groups(items))
    if not counts["train"]:
        raise DatasetError(
            [
                Problem(
                    source,
                    f"no image left for training: the {len(items)} images form "
                    f"{groups} group(s) of duplicates and near-copies",
                )
            ]
        )
    if not counts["validation"] or not counts["test"]:
        raise DatasetError(
            [
                Problem(
                    source,
                    f"too few images to split: {len(items)} image(s) in {groups} group(s) give "
                    f"training {counts['train']}, validation {counts['validation']}, test "
                    f"{counts['test']}; at least 3 images in 3 groups (of duplicates and "
                    "near-copies) are needed, one each for training, validation and test",
                )
            ]
        )


def _section_counts(datalist: dict) -> dict[str, dict[str, int]]:
    counts = {}
    for section in SECTIONS:
        per_class = Counter(entry["class"] for entry in datalist[section])
        counts[section] = dict(sorted(per_class.items())) | {"total": len(datalist[section])}
    return counts


def prepare_dataset(
    source: Path,
    out: Path,
    data: DataOptions | None = None,
    *,
    labeled_fraction: float = 0.125,
    seed: int = 0,
    include_normal: bool = False,
    near_copy_correlation: float = NEAR_DUPLICATE_CORRELATION,
) -> dict:
    """Check `source`, read as `data` says (`DataOptions`; default: the BUSI or the images/ + masks/ layout), then
    write the prepared dataset to `out`; return a summary with counts per split/class.

    The class CSV (`data.classes`, a relative path is read from the current folder) names each image's class;
    with a group column (e.g. the patient) every group stays on one side of every split, merged with the
    exact-duplicate groups. Near-copies (32x32 thumbnails correlating at least `near_copy_correlation`) stay on one
    side of every split, as exact duplicates do. Every split gets at least one image (`mgcc.data.split`): a dataset
    too small for one group each in training, validation and test is refused. Raises `DatasetError` listing every
    fatal problem, or naming a bad setting (nothing is written then); warnings are returned in the summary and
    recorded in the manifest.
    """
    data = DataOptions() if data is None else data
    mask_threshold = data.mask_threshold
    labeled_fraction = labeled_fraction_option(labeled_fraction)
    seed = seed_option(seed)
    near_copy_correlation = near_copy_option(near_copy_correlation)
    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.is_dir():
        raise DatasetError([Problem(source, "source folder not found")])
    layout = _pick_layout(source, data.layout, data.folder_options())
    columns = _class_columns(source, data)
    try:
        all_cases, problems, read_from = _scan(source, layout, data, columns)
    except ValueError as error:  # a malformed pattern
        raise DatasetError([Problem(source, str(error))]) from error
    problems = _output_problems(out, read_from) + problems
    excluded = Counter(case.label for case in all_cases if case.label == "normal" and not include_normal)
    cases = [case for case in all_cases if include_normal or case.label != "normal"]
    if not cases and not any(problem.fatal for problem in problems):
        left_out = (
            f": {excluded['normal']} images of class 'normal' were left out (pass --include-normal to keep them)"
            if excluded
            else ""
        )
        problems.append(Problem(source, "no images to prepare" + left_out))
    checked: list[CheckedCase] = []
    for case in cases:
        facts, case_problems = check_case(case, mask_threshold)
        problems += case_problems
        if facts is not None:
            checked.append(facts)
    fatal = [problem for problem in problems if problem.fatal]
    if fatal:
        raise DatasetError(fatal)
    warnings = [problem for problem in problems if not problem.fatal]

    near = near_duplicate_groups(
        [facts.case.id for facts in checked], np.stack([facts.thumbnail for facts in checked]), near_copy_correlation
    )
    near_copy_of = {identifier: group[0] for group in near for identifier in group}
    items = [
        SplitItem(
            facts.case.id, facts.case.label, facts.pixel_sha256, facts.case.group, near_copy_of.get(facts.case.id)
        )
        for facts in checked
    ]
    assignments = assign_splits(items, seed=seed, labeled_fraction=labeled_fraction)
    _check_splits(source, items, assignments)
    datalist = build_datalist({facts.case.id: facts.case.label for facts in checked}, assignments)
    duplicates = [[item.id for item in group] for group in duplicate_groups(items) if len(group) > 1]
    warnings += _disagreeing_duplicates(checked, duplicates)
    together = [group for group in split_groups(items) if len(group) > 1]
    summary = {
        "images": len(checked),
        "classes": dict(sorted(Counter(facts.case.label for facts in checked).items())),
        "excluded": dict(excluded),
        "multi_mask_images": sum(len(facts.case.masks) > 1 for facts in checked),
        "thresholded_masks": sum(facts.thresholded_masks for facts in checked),
        "resampled_masks": sum(facts.resampled_masks for facts in checked),
        "mask_threshold": mask_threshold,
        "duplicate_groups": duplicates,
        "near_duplicate_groups": near,
        "near_copy_correlation": near_copy_correlation,
        "group_column": columns.group,
        "multi_image_groups": len(together),
        "images_in_multi_image_groups": sum(len(group) for group in together),
        "sections": _section_counts(datalist),
        "warnings": len(warnings),
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": str(source),
        "layout": layout,
        "settings": {
            "seed": seed,
            "labeled_fraction": labeled_fraction,
            "include_normal": include_normal,
            "group_column": columns.group,
            "mask_threshold": mask_threshold,
            "near_copy_correlation": near_copy_correlation,
        },
        "summary": summary,
        "warnings": [{"file": _relative(Path(problem.path), source), "reason": problem.reason} for problem in warnings],
        "images": [_record(facts, source, section_of(assignments[facts.case.id])) for facts in checked],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        _write_prepared(out, checked, mask_threshold, manifest, datalist)
    return summary | {"out": str(out), "warning_list": [str(problem) for problem in warnings]}


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold `.<out>.lock` next to `out` while writing it: a second `prepare` into the same folder at the same time
    is refused instead of mixing its files into this one's."""
    path = out.parent / f".{out.name}.lock"
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetError([Problem(out, "another mgcc prepare is writing this folder now; wait for it")]) from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still held: nothing is left next to `out`


def _write_prepared(
    out: Path, checked: list[CheckedCase], mask_threshold: float | None, manifest: dict, datalist: dict
) -> None:
    """Write the images, labels, manifest and datalist; swap them into `out` once complete."""
    # written next to `out` first and moved into place when complete: a run stopped midway keeps the previous dataset
    staging, replaced = out.parent / f".{out.name}.incoming", out.parent / f".{out.name}.replaced"
    for folder in (staging, replaced):
        shutil.rmtree(folder, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    (staging / "labels").mkdir()
    for facts in checked:
        _write_case(facts.case, staging, mask_threshold)
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


def _print_warnings(warnings: list[dict[str, str]]) -> None:
    """One line per reason, with the count and the first names (`warnings` as the manifest records them)."""
    by_reason: dict[str, list[str]] = {}
    for warning in warnings:
        by_reason.setdefault(warning["reason"], []).append(warning["file"])
    for reason, paths in by_reason.items():
        examples = ", ".join(Path(path).name for path in paths[:3]) + (", ..." if len(paths) > 3 else "")
        print(f"warning: {reason}: {len(paths)} file(s) ({examples})", file=sys.stderr)


def print_summary(summary: dict) -> None:
    """The split counts per section and class, as a small table."""
    classes = list(summary["classes"])
    print(f"prepared {summary['images']} images into {summary['out']}")
    if summary["excluded"]:
        print(
            "excluded: "
            + ", ".join(f"{count} {label} (use --include-normal)" for label, count in summary["excluded"].items())
        )
    print(
        f"multi-mask images merged: {summary['multi_mask_images']}; "
        f"duplicate groups kept together: {summary['duplicate_groups']}"
    )
    near = summary["near_duplicate_groups"]
    print(
        f"near-duplicate groups kept together: {len(near)} ({sum(len(group) for group in near)} images; "
        f"32x32 thumbnails correlating >= {summary['near_copy_correlation']:g})"
    )
    if summary["resampled_masks"]:
        print(f"masks at another resolution resampled to their image's size: {summary['resampled_masks']}")
    if summary["thresholded_masks"] or summary["mask_threshold"] is not None:
        level = (
            "half their maximum value"
            if summary["mask_threshold"] is None
            else f"--mask-threshold {summary['mask_threshold']:g}"
        )
        print(f"non-binary masks binarized at {level}: {summary['thresholded_masks']}")
    if summary["group_column"] is not None:
        print(
            f"groups by column '{summary['group_column']}' (merged with duplicates): {summary['multi_image_groups']} "
            f"multi-image groups ({summary['images_in_multi_image_groups']} images) kept together"
        )
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
    mask_threshold: float | None = None,
    near_copy_correlation: float = NEAR_DUPLICATE_CORRELATION,
) -> None:
    """CLI `mgcc prepare SOURCE --out DIR`: check, normalize and split a dataset; exit 2 on invalid data.

    --labeled-fraction accepts 0.125 or 1/8 (in (0, 1]); --seed a whole number. Generic layout: --images/--masks
    folders (relative to SOURCE), --image-pattern/--mask-pattern like 'case_{id}.png'/'mask_{id}.png', --classes
    CSV (a relative path is read from the current folder; columns named by --id-column, default image, and
    --class-column, default class). --group-column NAME (a column of that CSV, e.g. the patient): images with
    the same value stay on one side of every split. --mask-threshold T: masks with more than one non-zero value
    are lesion where >= T (0..255); default half their maximum. A mask at another resolution of its image's
    aspect ratio is resampled to the image (nearest, after binarizing). --near-copy-correlation C (default
    0.92): images whose 32x32 thumbnails correlate at least C are near-copies and stay on one side of every
    split; 1 keeps only pixel-identical images together.
    """
    started = time.perf_counter()
    try:
        data = DataOptions.from_options(
            {
                "layout": layout,
                "images": images,
                "masks": masks,
                "image_pattern": image_pattern,
                "mask_pattern": mask_pattern,
                "classes": classes,
                "id_column": id_column,
                "class_column": class_column,
                "group_column": group_column,
                "mask_threshold": mask_threshold,
            }
        )
        summary = prepare_dataset(
            Path(source),
            Path(out),
            data,
            labeled_fraction=labeled_fraction,
            seed=seed,
            include_normal=bool(include_normal),
            near_copy_correlation=near_copy_correlation,
        )
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    _print_warnings(read_json(Path(summary["out"]) / "manifest.json")["warnings"])
    print_summary(summary)
    print(f"took {time.perf_counter() - started:.1f} s")
