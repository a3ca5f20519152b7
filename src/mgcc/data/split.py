"""Deterministic, class-stratified train/validation/test split that keeps exact duplicates and groups together.

Protocol (the project's evaluation protocol, docs/data.md "Split protocol"):
- images with the same pixels form one group, and so do near-copies (`near_duplicate_groups`: the same view
  saved twice, with other calipers or a slightly different crop) and images with the same group value (e.g.
  one patient, from a CSV column); groups that share an image are merged. A group's id is its smallest image id and its
  stratum is the class of that image;
- per stratum, groups are ordered by sha256("<seed>/split/<group id>") - a function of names and seed only,
  so neither file order nor the machine changes it - and filled in that order: test (20% of the stratum's
  images, rounded half up), then validation (10%), then train (the rest);
- the labeled part of train is chosen the same way per stratum, ordered by sha256("<seed>/labeled/<group id>"),
  round(labeled_fraction * train images) images, at least one;
- a small dataset (fewer than 5 images in every stratum) would leave the whole test or validation split empty:
  then the stratum with the most training groups gives its next group in split order to that split (test first),
  as long as it keeps one for training. A MONAI training run needs a validation set (its validation handler,
  the best checkpoint) and `mgcc run` scores on test, so an empty split is never what the user wants;
  `mgcc prepare` refuses a dataset too small for one group in each.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SPLIT_FRACTIONS = {"test": 0.2, "validation": 0.1}
TRAIN = "train"
#: two images are near-copies when the Pearson correlation of their 32x32 thumbnails (`validate.thumbnail`) is at
#: least this. Chosen on BUSI (docs/data.md): pairs above it were the same lesion in the same view (calipers added,
#: shifted a few pixels); between 0.90 and 0.92 different patients' dark malignant images start to join.
NEAR_DUPLICATE_CORRELATION = 0.92


@dataclass(frozen=True)
class SplitItem:
    """What the split needs to know about an image."""

    id: str
    label: str
    pixel_sha256: str
    group: str | None = None  # e.g. the patient; images with the same value stay on one side of every split
    near_copy_of: str | None = None  # the first image id of its near-duplicate group (`near_duplicate_groups`)


@dataclass(frozen=True)
class Assignment:
    split: str  # "train", "validation" or "test"
    labeled: bool


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _order(seed: int, purpose: str, group_id: str) -> str:
    return hashlib.sha256(f"{seed}/{purpose}/{group_id}".encode()).hexdigest()


def _sorted_groups(groups: Iterable[list[SplitItem]]) -> list[list[SplitItem]]:
    """Each group sorted by id, groups sorted by their first id."""
    return sorted((sorted(group, key=lambda item: item.id) for group in groups), key=lambda group: group[0].id)


def duplicate_groups(items: list[SplitItem]) -> list[list[SplitItem]]:
    """Images grouped by identical pixels, each group sorted by id, groups sorted by their first id."""
    by_pixels: dict[str, list[SplitItem]] = {}
    for item in items:
        by_pixels.setdefault(item.pixel_sha256, []).append(item)
    return _sorted_groups(by_pixels.values())


def near_duplicate_groups(
    ids: list[str], thumbnails: np.ndarray, threshold: float = NEAR_DUPLICATE_CORRELATION
) -> list[list[str]]:
    """Groups of two or more ids joined by thumbnail correlation >= `threshold` (chains join: union-find).

    `thumbnails` holds one zero-mean, unit-norm row per id, so a dot product is the Pearson correlation.
    Each group sorted, groups sorted by their first id.
    """
    parent = list(range(len(ids)))
    if len(ids) > 1:
        similar = np.triu(thumbnails @ thumbnails.T >= threshold, k=1)
        for a, b in zip(*np.nonzero(similar), strict=True):
            parent[_root(parent, int(a))] = _root(parent, int(b))
    merged: dict[int, list[str]] = {}
    for index, identifier in enumerate(ids):
        merged.setdefault(_root(parent, index), []).append(identifier)
    return sorted((sorted(group) for group in merged.values() if len(group) > 1), key=lambda group: group[0])


def _root(parent: list[int], index: int) -> int:
    while parent[index] != index:
        parent[index] = parent[parent[index]]
        index = parent[index]
    return index


def split_groups(items: list[SplitItem]) -> list[list[SplitItem]]:
    """The units of the split: images joined by identical pixels, near-copies or the same group value (union-find).

    Sorted like `duplicate_groups`, which it equals when no item has a group.
    """
    parent = list(range(len(items)))
    first: dict[
        tuple[str, str], int
    ] = {}  # ("pixels", sha256), ("near", id) or ("group", value) -> first image holding it
    for index, item in enumerate(items):
        keys = [("pixels", item.pixel_sha256)] + ([("group", item.group)] if item.group else [])
        keys += [("near", item.near_copy_of)] if item.near_copy_of else []
        for key in keys:
            parent[_root(parent, index)] = _root(parent, first.setdefault(key, index))
    merged: dict[int, list[SplitItem]] = {}
    for index, item in enumerate(items):
        merged.setdefault(_root(parent, index), []).append(item)
    return _sorted_groups(merged.values())


def _fill(groups: list[list[SplitItem]], quotas: list[tuple[str, int]], rest: str) -> dict[str, list[list[SplitItem]]]:
    """Hand groups, in order, to each (name, image quota) in turn; what is left goes to `rest`."""
    filled: dict[str, list[list[SplitItem]]] = {name: [] for name, _ in quotas}
    filled[rest] = []
    position = 0
    for name, quota in quotas:
        taken = 0
        while position < len(groups) and taken < quota:
            filled[name].append(groups[position])
            taken += len(groups[position])
            position += 1
    filled[rest] += groups[position:]
    return filled


def assign_splits(items: list[SplitItem], seed: int = 0, labeled_fraction: float = 0.125) -> dict[str, Assignment]:
    """Split and labeled flag per image id (the protocol of the module docstring)."""
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    strata: dict[str, list[list[SplitItem]]] = {}
    for group in split_groups(items):
        strata.setdefault(group[0].label, []).append(group)
    ordered = {
        label: sorted(groups, key=lambda group: _order(seed, "split", group[0].id)) for label, groups in strata.items()
    }
    quotas = {
        label: {
            name: _round_half_up(fraction * sum(len(group) for group in groups))
            for name, fraction in SPLIT_FRACTIONS.items()
        }
        for label, groups in strata.items()
    }
    for name in SPLIT_FRACTIONS:  # a split empty in every stratum gets one group where training can spare it
        filled = {label: _fill(ordered[label], list(quotas[label].items()), TRAIN) for label in ordered}
        spare = {label: len(parts[TRAIN]) for label, parts in filled.items() if len(parts[TRAIN]) >= 2}
        if spare and not any(parts[name] for parts in filled.values()):
            quotas[max(sorted(spare), key=spare.__getitem__)][name] = 1
    assignments: dict[str, Assignment] = {}
    for label, groups in ordered.items():
        parts = _fill(groups, list(quotas[label].items()), TRAIN)
        train = sorted(parts.pop(TRAIN), key=lambda group: _order(seed, "labeled", group[0].id))
        train_total = sum(len(group) for group in train)
        labeled_quota = max(1, _round_half_up(labeled_fraction * train_total)) if train else 0
        labeled = _fill(train, [("labeled", labeled_quota)], "unlabeled")
        for kind, kind_groups in labeled.items():
            for group in kind_groups:
                assignments.update({item.id: Assignment(TRAIN, kind == "labeled") for item in group})
        for name, name_groups in parts.items():
            for group in name_groups:
                assignments.update({item.id: Assignment(name, False) for item in group})
    return assignments
