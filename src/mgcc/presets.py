"""Pipeline presets: small JSON files in the top-level `configs/` folder, made of bundle overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mgcc import PRESETS_DIR


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name_or_path: str | Path) -> dict[str, Any]:
    """Load a preset by name (`demo`, `busi-cpu`, `busi-gpu`) or by path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"preset '{name_or_path}' not found (looked for {path}); "
                                f"available: {', '.join(available_presets())}")
    try:
        preset = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"preset {path} is not valid JSON: {err}") from err
    missing = [k for k in ("data", "ldm", "segmentation") if k not in preset]
    if missing:
        raise ValueError(f"preset {path} lacks section(s) {missing}")
    preset["name"] = path.stem
    return preset
