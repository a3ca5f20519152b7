# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""The "no lesion" answer: a predicted lesion smaller than a share of the image is dropped, so a lesion-free scan
gets an empty mask instead of a few speckles called lesion. The share is chosen on validation images (the model card
records it); the decision is made at the network's input size, before the mask is resized to the image's."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["EmptyBelowAread"]


class EmptyBelowAread(MapTransform):
    """Zero a probability map whose lesion (probability > ``threshold``) covers less than ``min_fraction`` of it.

    Args:
        keys: the probability maps (after the sigmoid), channel first.
        min_fraction: the least share of the image a lesion may cover; ``0`` keeps every prediction.
        threshold: the probability that makes a pixel lesion (the masks' threshold).
    """

    def __init__(self, keys: KeysCollection, min_fraction: float = 0.0, threshold: float = 0.5) -> None:
        super().__init__(keys)
        if not 0.0 <= float(min_fraction) < 1.0:
            raise ValueError(f"config key 'min_lesion_fraction' must be in [0, 1), got {min_fraction!r}")
        self.min_fraction, self.threshold = float(min_fraction), float(threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[key]
            if self.min_fraction and float((prob > self.threshold).float().mean()) < self.min_fraction:
                d[key] = prob * 0  # keeps the type, metadata and transform trace Invertd needs
        return d
