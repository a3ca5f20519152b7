"""MGCC-MONAI: orchestration package for the MGCC ultrasound segmentation bundles."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root when running from a source checkout (bundles/ and configs/ live there).
REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES_DIR = REPO_ROOT / "bundles"
PRESETS_DIR = REPO_ROOT / "configs"
SEG_BUNDLE = BUNDLES_DIR / "ultrasound_mgcc_segmentation"
LDM_BUNDLE = BUNDLES_DIR / "ultrasound_ldm_generation"
