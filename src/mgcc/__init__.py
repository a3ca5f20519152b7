"""MGCC-MONAI: orchestration package for the MGCC ultrasound segmentation bundles."""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
#: Repository root when running from a source checkout (`pip install -e .`).
REPO_ROOT = PACKAGE_DIR.parents[1]


def shipped_folder(package_folder: str, repository_folder: str) -> Path:
    """A folder the wheel carries inside the package (`pip install .`), else the checkout's own folder."""
    installed = PACKAGE_DIR / package_folder
    return installed if installed.is_dir() else REPO_ROOT / repository_folder


BUNDLES_DIR = shipped_folder("_bundles", "bundles")
PRESETS_DIR = shipped_folder("_presets", "configs")
SEG_BUNDLE = BUNDLES_DIR / "ultrasound_mgcc_segmentation"
LDM_BUNDLE = BUNDLES_DIR / "ultrasound_ldm_generation"
