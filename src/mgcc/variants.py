"""Segmentation variants (the rows of the ablation) and the run folders named after them.

A variant is a list of the segmentation bundle's config files plus overrides. Its training writes
`<run>/segmentation-<variant>/` and its evaluation `<run>/evaluate-<variant>/`: `mgcc run` trains the variant its
preset chooses (`mgcc-synthetic` for `"unlabeled_source": "synthetic"`), `mgcc compare` the ones asked for.
Runs made before the folders were named so have `segmentation/` and `evaluate/`: `adopt_legacy_folders` renames
them (and rewrites the records that name them, so nothing trains again).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgcc import SEG_BUNDLE
from mgcc.errors import MgccError
from mgcc.stages import RECORD, STARTED, bundle_settings, fingerprint, read_json_or_none, write_json_atomic

#: variant -> (bundle config files, overrides); the comparison table reads top to bottom as the ablation does
VARIANTS: dict[str, tuple[list[str], dict]] = {
    "supervised": (["train.json", "train_supervised.json"], {}),
    "mgcc-labeled": (["train.json", "train_labeled_only.json"], {}),
    "mgcc-real": (["train.json"], {"unlabeled_source": "real"}),
    "mgcc-synthetic": (["train.json"], {"unlabeled_source": "synthetic"}),
    "mgcc-both": (["train.json"], {"unlabeled_source": "both"}),
    # a mask-conditioned generator's samples with their masks as labeled pairs, the real unlabeled images unlabeled
    "mgcc-synthetic-pairs": (["train.json", "train_synthetic_pairs.json"], {"unlabeled_source": "real"}),
}
LEGACY_FOLDERS = ("segmentation", "evaluate")  # the run's own training and evaluation, before they were named so


class VariantError(MgccError, ValueError):
    """The preset's segmentation settings match no variant."""


def training_folder(variant: str) -> str:
    return f"segmentation-{variant}"


def evaluation_folder(variant: str) -> str:
    return f"evaluate-{variant}"


def variant_of(config_files: Sequence[str], overrides: dict[str, Any]) -> str | None:
    """The variant a segmentation training with these config files (paths or names; `evaluate.json` ignored) and
    overrides is, with the bundle's defaults for what the overrides leave out; None when it is none of them."""
    files = [Path(f).name for f in config_files if Path(f).name != "evaluate.json"]
    settings = bundle_settings(SEG_BUNDLE, files, overrides)
    for name, (variant_files, variant_overrides) in VARIANTS.items():
        if files == variant_files and all(settings.get(k) == v for k, v in variant_overrides.items()):
            return name
    return None


def run_variant(preset: dict[str, Any]) -> str:
    """The variant `mgcc run` trains with `preset`: MGCC with the preset's unlabeled source."""
    spec = preset["segmentation"]
    variant = variant_of(["train.json"], {**spec.get("common", {}), **spec.get("train", {})})
    if variant is None:
        source = spec.get("train", {}).get("unlabeled_source", spec.get("common", {}).get("unlabeled_source"))
        raise VariantError(
            f"preset {preset.get('name')}: segmentation.train.unlabeled_source {source!r}: "
            "expected real, synthetic or both"
        )
    return variant


def adopt_legacy_folders(out: Path, default_variant: str) -> None:
    """Rename the `segmentation/` and `evaluate/` of a run made before folders were named after the variant to
    `segmentation-<variant>/` and `evaluate-<variant>/`: the variant its `args.json` trained, else `default_variant`
    (the preset's). The records of the run's stages are rewritten to the new names with their fingerprints
    carried over, so no stage runs again for the rename, except the report, whose text names the folders."""
    legacy = out / LEGACY_FOLDERS[0]
    if not any((out / name).is_dir() for name in LEGACY_FOLDERS):
        return
    args = read_json_or_none(legacy / "args.json")
    variant = (
        variant_of(args["config_file"], args) if isinstance(args, dict) and "config_file" in args else None
    ) or default_variant
    renames = {LEGACY_FOLDERS[0]: training_folder(variant), LEGACY_FOLDERS[1]: evaluation_folder(variant)}
    renames = {old: new for old, new in renames.items() if (out / old).is_dir()}
    for old, new in renames.items():
        if (out / new).exists():
            raise MgccError(
                f"{out}: both {old}/ (from before folders were named after the variant) and {new}/ "
                f"exist; move one of them out of the run"
            )
    for old, new in renames.items():
        (out / old).rename(out / new)
        print(f"[mgcc] {out / old} renamed {new}/ (folders are named after the variant they hold)", flush=True)
    _rename_in_records(out, renames)


def _rename_in_records(out: Path, renames: dict[str, str]) -> None:
    """Rewrite each stage record (`stage.json`, `started.json`) of the run that names a renamed stage: its name, the
    keys of its inputs, and the fingerprints that change with them (a stage's fingerprint is the hash of its
    inputs, which hold the fingerprints of the stages it reads from). The report is left to run again."""
    records = {
        p.parent.name: record
        for p in out.glob(f"*/{RECORD}")
        if ".stale-" not in p.parent.name and isinstance(record := read_json_or_none(p), dict) and "inputs" in record
    }
    new_fingerprints: dict[str, str] = {}

    def renamed_inputs(inputs: dict[str, str]) -> dict[str, str]:
        result = {}
        for key, value in inputs.items():
            if key.startswith("stage "):
                name = renames.get(key[len("stage ") :], key[len("stage ") :])
                if name in records and value == records[name].get("fingerprint"):
                    value = new_fingerprint(name)  # carried over; a stale one stays stale
                key = f"stage {name}"
            result[key] = value
        return result

    def new_fingerprint(name: str) -> str:
        if name not in new_fingerprints:
            record = records[name]
            new_fingerprints[name] = record.get("fingerprint", "")  # a cycle cannot recurse
            if record.get("fingerprint") == fingerprint(record["inputs"]):
                new_fingerprints[name] = fingerprint(renamed_inputs(record["inputs"]))
        return new_fingerprints[name]

    for name, record in records.items():
        inputs = renamed_inputs(record["inputs"])
        if name != "report" and (inputs != record["inputs"] or name in renames.values()):
            write_json_atomic(
                out / name / RECORD, {**record, "name": name, "inputs": inputs, "fingerprint": new_fingerprint(name)}
            )
    for path in out.glob(f"*/{STARTED}"):
        started = read_json_or_none(path)
        if isinstance(started, dict) and isinstance(started.get("inputs"), dict) and path.parent.name != "report":
            inputs = renamed_inputs(started["inputs"])
            if inputs != started["inputs"]:
                write_json_atomic(path, {"inputs": inputs, "fingerprint": fingerprint(inputs)})
