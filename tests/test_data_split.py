"""The split protocol: stratified 70/10/20, duplicates on one side, independent of file order, labeled fraction."""

import random
from collections import Counter

import pytest

from mgcc.data.split import SplitItem, assign_splits


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
        ("benign", "train"): 98, ("benign", "validation"): 14, ("benign", "test"): 28,
        ("malignant", "train"): 42, ("malignant", "validation"): 6, ("malignant", "test"): 12,
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
