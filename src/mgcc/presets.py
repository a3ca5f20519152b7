"""Pipeline presets: small JSON files in the top-level `configs/` folder, made of bundle overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mgcc import PRESETS_DIR
from mgcc.errors import MgccError

#: what a preset's `data` section may hold (its other sections are checked against the bundle configs)
DATA_KEYS = {"labeled_fraction", "seed", "include_normal", "phantom"}
PHANTOM_KEYS = {"n", "size", "seed"}


class PresetError(MgccError, ValueError):
    """A preset that cannot be used: not found, not JSON, a section missing or an unknown entry."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name_or_path: str | Path) -> dict[str, Any]:
    """Load a preset by name (`demo`, `busi-cpu`, `busi-gpu`) or by path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise PresetError(
            f"preset '{name_or_path}' not found (looked for {path}); available: {', '.join(available_presets())}"
        )
    try:
        preset = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PresetError(f"preset {path} is not valid JSON: {err}") from err
    if not isinstance(preset, dict):
        raise PresetError(f"preset {path}: expected a JSON object with sections data, ldm and segmentation")
    missing = [k for k in ("data", "ldm", "segmentation") if k not in preset]
    if missing:
        raise PresetError(f"preset {path} lacks section(s) {missing}")
    not_objects = [k for k in ("data", "ldm", "segmentation") if not isinstance(preset[k], dict)]
    if not_objects:
        raise PresetError(f"preset {path}: section(s) {', '.join(not_objects)} must be JSON objects")
    unknown = sorted(set(preset["data"]) - DATA_KEYS) + sorted(
        f"phantom.{key}" for key in set(preset["data"].get("phantom", {})) - PHANTOM_KEYS
    )
    if unknown:
        raise PresetError(
            f"preset {path}: unknown entry(ies) {', '.join(unknown)} in section 'data' "
            f"(known: {', '.join(sorted(DATA_KEYS))}; phantom: {', '.join(sorted(PHANTOM_KEYS))})"
        )
    preset["name"] = path.stem
    return preset
