"""The real BUSI copy: counts, merged multi-mask images, and the duplicate pair on one side of every split."""

import json
from collections import Counter

import numpy as np
import pytest

from mgcc.data.prepare import prepare_dataset
from mgcc.data.split import SplitItem, assign_splits, near_duplicate_groups
from mgcc.data.validate import read_image, read_mask

DUPLICATE_PAIR = ("benign_0433", "malignant_0145")


def test_counts_and_multi_mask_images(busi_cases):
    assert Counter(case.label for case in busi_cases) == {"benign": 437, "malignant": 210, "normal": 133}
    multi = {case.id: len(case.masks) for case in busi_cases if len(case.masks) > 1}
    assert len(multi) == 17 and multi["benign_0195"] == 3 and "malignant_0053" in multi


def test_duplicate_pair_has_the_same_pixels(busi_root):
    first, _ = read_image(busi_root / "benign" / "benign (433).png")
    second, _ = read_image(busi_root / "malignant" / "malignant (145).png")
    assert np.array_equal(first, second)


def test_duplicate_pair_stays_on_one_side_for_every_seed_and_fraction(busi_checked):
    assert len(busi_checked) == 647
    items = [SplitItem(facts.case.id, facts.case.label, facts.pixel_sha256) for facts in busi_checked]
    for seed in range(10):
        for fraction in (0.125, 0.25, 0.5, 1.0):
            assignments = assign_splits(items, seed=seed, labeled_fraction=fraction)
            assert assignments[DUPLICATE_PAIR[0]] == assignments[DUPLICATE_PAIR[1]]


def test_near_copies_never_straddle_the_split(busi_checked):
    """No test image has a near-copy (thumbnail correlation >= 0.92) in train or validation, for any seed."""
    ids = [facts.case.id for facts in busi_checked]
    thumbnails = np.stack([facts.thumbnail for facts in busi_checked])
    groups = near_duplicate_groups(ids, thumbnails)
    of = {identifier: group[0] for group in groups for identifier in group}
    assert 100 <= len(groups) <= 130 and of["malignant_0004"] == of["malignant_0005"]  # pairs looked at
    items = [
        SplitItem(facts.case.id, facts.case.label, facts.pixel_sha256, near_copy_of=of.get(facts.case.id))
        for facts in busi_checked
    ]
    correlation = thumbnails @ thumbnails.T
    for seed in range(3):
        split = np.array([assign_splits(items, seed=seed, labeled_fraction=1.0)[i].split for i in ids])
        across = correlation[np.ix_(split == "test", split != "test")]
        assert across.max() < 0.92


def test_every_mask_file_counts_in_multi_mask_images(busi_checked):
    multi = [facts for facts in busi_checked if len(facts.case.masks) > 1]
    assert len(multi) == 17
    for facts in multi:
        masks = [read_mask(path)[0] for path in facts.case.masks]
        union = np.logical_or.reduce(masks)
        assert facts.lesion_fraction == round(float(union.mean()), 6) > max(float(mask.mean()) for mask in masks)


@pytest.mark.integration
@pytest.mark.parametrize(("include_normal", "expected"), [(False, 647), (True, 780)])
def test_prepare_busi(busi_root, tmp_path, include_normal, expected):
    summary = prepare_dataset(busi_root, tmp_path / "busi", include_normal=include_normal)
    assert summary["images"] == expected and summary["multi_mask_images"] == 17
    assert summary["duplicate_groups"] == [list(DUPLICATE_PAIR)]
    assert len(summary["near_duplicate_groups"]) >= 100
    datalist = json.loads((tmp_path / "busi" / "datalist.json").read_text())
    section = {entry["image"]: name for name, entries in datalist.items() for entry in entries}
    assert section[f"images/{DUPLICATE_PAIR[0]}.png"] == section[f"images/{DUPLICATE_PAIR[1]}.png"]
    assert sum(len(entries) for entries in datalist.values()) == expected
    assert 0.69 < (len(datalist["training"]) + len(datalist["unlabeled"])) / expected < 0.71
