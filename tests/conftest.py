"""Shared fixtures: phantom data made by the tests, and the real BUSI copy beside the checkout."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUSI_ROOT = (REPO_ROOT / ".." / "shared" / "data" / "Dataset_BUSI_with_GT").resolve()


@pytest.fixture(scope="session")
def busi_root() -> Path:
    if not BUSI_ROOT.is_dir():
        pytest.skip(f"BUSI not found at {BUSI_ROOT}")
    return BUSI_ROOT


@pytest.fixture(scope="session")
def phantom_raw(tmp_path_factory) -> Path:
    """A 48-image phantom dataset in the BUSI folder layout (64x64, seed 0)."""
    from mgcc.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom_raw"), n=48, size=64, seed=0)


@pytest.fixture(scope="session")
def prepared_phantom(phantom_raw, tmp_path_factory) -> Path:
    """The phantom dataset after `mgcc prepare` (labeled fraction 1/4): a folder holding datalist.json."""
    from mgcc.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("phantom_prepared")
    prepare_dataset(phantom_raw, out, labeled_fraction=0.25, seed=0)
    return out
