"""The split protocol: stratified 70/10/20, duplicates on one side, independent of file order, labeled fraction."""

import random
from collections import Counter

import numpy as np
import pytest

from mgcc.data.split import SplitItem, assign_splits, duplicate_groups, near_duplicate_groups, split_groups


def _items(benign: int = 140, malignant: int = 60) -> list[SplitItem]:
    items = [SplitItem(f"benign_{k:04d}", "benign", f"b{k}") for k in range(benign)]
    return items + [SplitItem(f"malignant_{k:04d}", "malignant", f"m{k}") for k in range(malignant)]


def _counts(items, assignments) -> Counter:
    labels = {item.id: item.label for item in items}
    return Counter((labels[key], value.split) for key, value in assignments.items())


def test_split_is_stratified_70_10_20():
    items = _items()
    counts = _counts(items, assign_splits(items, seed=0))
    assert counts == {
        ("benign", "train"): 98,
        ("benign", "validation"): 14,
        ("benign", "test"): 28,
        ("malignant", "train"): 42,
        ("malignant", "validation"): 6,
        ("malignant", "test"): 12,
    }


def test_split_does_not_depend_on_input_order():
    items = _items()
    reference = assign_splits(items, seed=3)
    for shuffle_seed in range(3):
        shuffled = items[:]
        random.Random(shuffle_seed).shuffle(shuffled)
        assert assign_splits(shuffled, seed=3) == reference


def test_seed_changes_the_split():
    items = _items()
    assert assign_splits(items, seed=0) != assign_splits(items, seed=1)


@pytest.mark.parametrize("seed", range(20))
def test_exact_duplicates_never_straddle_splits(seed):
    items = _items()
    # the BUSI case: the same pixels under two classes, plus a same-class pair
    items[5] = SplitItem(items[5].id, "benign", "same-pixels")
    items[150] = SplitItem(items[150].id, "malignant", "same-pixels")
    items[7] = SplitItem(items[7].id, "benign", "pair")
    items[8] = SplitItem(items[8].id, "benign", "pair")
    assignments = assign_splits(items, seed=seed)
    assert assignments[items[5].id] == assignments[items[150].id]
    assert assignments[items[7].id] == assignments[items[8].id]


@pytest.mark.parametrize(("fraction", "labeled"), [(0.125, 12 + 5), (0.25, 25 + 11), (0.5, 49 + 21), (1.0, 140)])
def test_labeled_fraction_of_train_per_class(fraction, labeled):
    items = _items()
    assignments = assign_splits(items, seed=0, labeled_fraction=fraction)
    assert sum(value.labeled for value in assignments.values()) == labeled
    assert all(value.split == "train" for value in assignments.values() if value.labeled)


def test_smaller_fraction_labels_a_subset():
    items = _items()
    small = {key for key, value in assign_splits(items, 0, 0.125).items() if value.labeled}
    large = {key for key, value in assign_splits(items, 0, 0.5).items() if value.labeled}
    assert small < large


def test_a_tiny_class_keeps_one_labeled_image():
    items = _items(benign=20, malignant=2)
    assignments = assign_splits(items, seed=0, labeled_fraction=0.125)
    assert any(value.labeled for key, value in assignments.items() if key.startswith("malignant"))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_labeled_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(ValueError, match="labeled_fraction"):
        assign_splits(_items(), labeled_fraction=fraction)


def _grouped_items() -> list[SplitItem]:
    """90 images of 36 patients (2 or 3 images each, one class per patient) and 6 images without a patient."""
    items = []
    for patient in range(36):
        label = "benign" if patient % 3 else "malignant"
        items += [
            SplitItem(f"img_{len(items) + k:04d}", label, f"px{len(items) + k}", f"P{patient}")
            for k in range(2 + patient % 2)
        ]
    return items + [SplitItem(f"img_{len(items) + k:04d}", "benign", f"px{len(items) + k}") for k in range(6)]


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("fraction", [0.125, 0.5])
def test_groups_never_straddle_splits_nor_labeled(seed, fraction):
    items = _grouped_items()
    items[0] = SplitItem(
        items[0].id, items[0].label, items[-1].pixel_sha256, items[0].group
    )  # joins P0 and the last image
    assignments = assign_splits(items, seed=seed, labeled_fraction=fraction)
    by_group: dict[str, set] = {}
    for item in items:
        by_group.setdefault(item.group, set()).add(assignments[item.id])
    assert all(len(sides) == 1 for group, sides in by_group.items() if group is not None)
    assert assignments[items[-1].id] == assignments[items[0].id]
    assert {value.split for value in assignments.values()} == {"train", "validation", "test"}
    assert any(value.labeled for value in assignments.values())


def test_split_groups_merge_same_pixels_or_same_group():
    items = [
        SplitItem("d", "malignant", "x", "P1"),
        SplitItem("c", "benign", "y", "P1"),
        SplitItem("b", "benign", "x"),
        SplitItem("e", "benign", "z", "P2"),
        SplitItem("a", "benign", "w", ""),
    ]
    assert [[item.id for item in group] for group in split_groups(items)] == [["a"], ["b", "c", "d"], ["e"]]
    assert [[item.id for item in group] for group in duplicate_groups(items)] == [["a"], ["b", "d"], ["c"], ["e"]]


def test_images_in_groups_of_their_own_split_as_without_groups():
    items = _items()
    alone = [SplitItem(item.id, item.label, item.pixel_sha256, f"patient-{item.id}") for item in items]
    for seed in range(3):
        assert assign_splits(alone, seed=seed) == assign_splits(items, seed=seed)


def test_a_group_is_in_the_stratum_of_its_smallest_id():
    patient = {"benign_0000"} | {f"malignant_{k:04d}" for k in range(10)}  # one benign and ten malignant images
    items = [
        SplitItem(item.id, item.label, item.pixel_sha256, "P" if item.id in patient else None)
        for item in _items(20, 20)
    ]
    assignments = assign_splits(items, seed=0, labeled_fraction=1.0)
    assert len({assignments[key] for key in patient}) == 1
    # the malignant stratum is the ten other malignant images: 2 test, 1 validation, 7 train
    rest = Counter(assignments[item.id].split for item in items if item.label == "malignant" and item.id not in patient)
    assert rest == {"test": 2, "validation": 1, "train": 7}


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_near_duplicate_groups_join_correlated_thumbnails_in_chains():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 1024))
    near = base[0] + 0.2 * rng.normal(size=1024)  # correlation ~0.98 with base[0]
    chained = near + 0.2 * rng.normal(size=1024)  # ~0.98 with `near`, lower with base[0]: joined through it
    thumbnails = _unit(np.stack([base[0], base[1], near, base[2], chained, base[3]]))
    ids = ["f", "b", "e", "c", "a", "d"]
    assert near_duplicate_groups(ids, thumbnails) == [["a", "e", "f"]]
    assert near_duplicate_groups(ids, thumbnails, threshold=1.0) == []
    assert near_duplicate_groups(["x"], thumbnails[:1]) == []


@pytest.mark.parametrize("seed", range(5))
def test_near_copies_stay_on_one_side(seed):
    items = _items()
    for index in (3, 40, 170):
        items[index] = SplitItem(
            items[index].id, items[index].label, items[index].pixel_sha256, near_copy_of="benign_0003"
        )
    assignments = assign_splits(items, seed=seed)
    assert len({assignments[items[index].id] for index in (3, 40, 170)}) == 1
