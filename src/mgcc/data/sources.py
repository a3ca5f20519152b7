"""A dataset in any of its three forms becomes a prepared dataset (what `mgcc run`, `compare` and `evaluate` read).

- the BUSI layout (`benign/`, `malignant/`, `normal/` with `<name>_mask*.png`);
- the generic layout: an images folder and a masks folder, with `mgcc prepare`'s data options
  (`mgcc.data.options.DataOptions`: `images`, `masks`, `image_pattern`, `mask_pattern`, `classes`, `id_column`,
  `class_column`, `group_column`, `layout`, `mask_threshold`);
- an already prepared folder (`manifest.json` + `datalist.json`, written by `mgcc prepare`): its images are split
  again with the run's seed and labeled fraction, keeping the classes, groups and near-copy rule its manifest
  records, so a seed means the same thing for every form.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Any

from mgcc.data.options import DataOptions
from mgcc.data.prepare import prepare_dataset
from mgcc.data.records import DatasetError, Problem
from mgcc.data.split import NEAR_DUPLICATE_CORRELATION

__all__ = ["DATA_OPTIONS", "DataOptions", "checked_options", "is_prepared", "prepare_any"]

#: `mgcc prepare` options for a raw dataset, as `mgcc run/compare/evaluate` accept them (`DataOptions`' fields).
DATA_OPTIONS = DataOptions.names()


def is_prepared(folder: Path) -> bool:
    return (folder / "manifest.json").is_file() and (folder / "datalist.json").is_file()


def checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """The data options that are set (a plain dict, as a run records and fingerprints them), after checking them
    once as `DataOptions` does: unknown names and bad values are one `DatasetError` line naming the option."""
    DataOptions.from_options(options)
    options = {key: value for key, value in options.items() if value is not None}
    if "classes" in options:  # read from the working folder, as `mgcc prepare` does; absolute, so a resumed run
        options["classes"] = str(Path(options["classes"]).resolve())  # started elsewhere reads the same file
    return options


def _resplit(source: Path, out: Path, options: dict[str, Any], **settings: Any) -> dict:
    """Prepare a prepared folder again as a generic-layout dataset whose classes and groups come from its manifest."""
    if options:
        raise DatasetError(
            [Problem(source, f"is a prepared dataset: the options {sorted(options)} apply to raw datasets only")]
        )
    try:
        manifest = json.loads((source / "manifest.json").read_text())
        records = manifest["images"]
        near_copy = manifest["settings"].get("near_copy_correlation", NEAR_DUPLICATE_CORRELATION)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise DatasetError(
            [Problem(source / "manifest.json", f"not a prepared dataset's manifest ({error})")]
        ) from None
    with tempfile.TemporaryDirectory() as scratch:
        classes = Path(scratch) / "classes.csv"
        with open(classes, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "class", "group"])
            writer.writerows([Path(r["image"]).name, r["class"], r.get("group") or ""] for r in records)
        data = DataOptions(
            layout="folders", images="images", masks="labels", classes=str(classes), group_column="group"
        )
        return prepare_dataset(source, out, data, near_copy_correlation=near_copy, **settings)


def prepare_any(
    source: Path,
    out: Path,
    *,
    labeled_fraction: float,
    seed: int,
    include_normal: bool,
    options: dict[str, Any] | DataOptions | None = None,
) -> dict:
    """Prepare `source` (any of the three forms) into `out`; return `prepare_dataset`'s summary. `options`: the
    data options by name (`checked_options`' dict, or a `DataOptions`)."""
    options = options.given() if isinstance(options, DataOptions) else options
    source, options = Path(source).resolve(), checked_options(options or {})
    settings = {"labeled_fraction": labeled_fraction, "seed": seed, "include_normal": include_normal}
    if is_prepared(source):
        return _resplit(source, out, options, **settings)
    return prepare_dataset(source, out, DataOptions.from_options(options), **settings)
