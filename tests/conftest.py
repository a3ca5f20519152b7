"""Shared fixtures: phantom data made by the tests, and the real BUSI copy beside the checkout."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUSI_ROOT = (REPO_ROOT / ".." / "shared" / "data" / "Dataset_BUSI_with_GT").resolve()
STU_ROOT = (REPO_ROOT / ".." / "shared" / "data" / "STU-Hospital").resolve()
#: `mgcc prepare` options for STU-Hospital's published layout (images and masks in one folder)
STU_OPTIONS = {"images": ".", "masks": ".", "image_pattern": "Test_Image_{id}.png", "mask_pattern": "mask_{id}.png"}


@pytest.fixture(scope="session")
def busi_root() -> Path:
    if not BUSI_ROOT.is_dir():
        pytest.skip(f"BUSI not found at {BUSI_ROOT}")
    return BUSI_ROOT


@pytest.fixture(scope="session")
def busi_cases(busi_root):
    from mgcc.data.busi import scan_busi

    cases, problems = scan_busi(busi_root)
    assert not [problem for problem in problems if problem.fatal]
    return cases


@pytest.fixture(scope="session")
def busi_checked(busi_cases):
    """Every benign and malignant case read and checked once (no files written)."""
    from mgcc.data.validate import check_case

    checked = []
    for case in busi_cases:
        if case.label != "normal":
            facts, problems = check_case(case)
            assert facts is not None, problems
            checked.append(facts)
    return checked


@pytest.fixture(scope="session")
def busi_normal_checked(busi_cases):
    """Every case of class `normal` (no lesion, empty masks) read and checked once."""
    from mgcc.data.validate import check_case

    checked = [check_case(case)[0] for case in busi_cases if case.label == "normal"]
    assert all(facts is not None for facts in checked)
    return checked


def _test_split(checked: list) -> list:
    """The checked cases that `mgcc prepare` puts in the test split at seed 0, labeled fraction 1, near-copies
    grouped."""
    import numpy as np

    from mgcc.data.split import SplitItem, assign_splits, near_duplicate_groups

    groups = near_duplicate_groups([f.case.id for f in checked], np.stack([f.thumbnail for f in checked]))
    near = {identifier: group[0] for group in groups for identifier in group}
    items = [SplitItem(f.case.id, f.case.label, f.pixel_sha256, near_copy_of=near.get(f.case.id)) for f in checked]
    assignments = assign_splits(items, seed=0, labeled_fraction=1.0)
    return [f for f in checked if assignments[f.case.id].split == "test"]


@pytest.fixture(scope="session")
def busi_release_with_normal_test_split(busi_checked, busi_normal_checked) -> list:
    """The test section of `mgcc prepare BUSI --include-normal --labeled-fraction 1` (the split of release 2.0)."""
    return _test_split(busi_checked + busi_normal_checked)


@pytest.fixture(scope="session")
def stu_root() -> Path:
    if not STU_ROOT.is_dir():
        pytest.skip(f"STU-Hospital not found at {STU_ROOT}")
    return STU_ROOT


@pytest.fixture(scope="session")
def prepared_stu(stu_root, tmp_path_factory) -> Path:
    """STU-Hospital after `mgcc prepare` (its masks resampled to the 128x128 images)."""
    from mgcc.data.options import DataOptions
    from mgcc.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("stu") / "prepared"
    prepare_dataset(stu_root, out, DataOptions(**STU_OPTIONS))
    return out


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


@pytest.fixture(scope="session")
def bench():
    """scripts/benchmark_serving_faults.py as a module: its helpers start and stop `mgcc label serve`, drive the
    server and the Deploy app (the serving-fault and lesion-free-answer tests share them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "benchmark_serving_faults", REPO_ROOT / "scripts" / "benchmark_serving_faults.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
