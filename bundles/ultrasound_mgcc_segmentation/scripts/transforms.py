# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Input normalisation to the network's contract: one channel, two spatial dimensions."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, SqueezeDim

__all__ = ["AsGrayscale2Dd"]


class AsGrayscale2Dd(MapTransform):
    """Make channel-first images 1-channel 2D: average the channels of RGB(A) images (alpha dropped) and
    drop a trailing singleton spatial dimension (one-slice NIfTI). Anything else is an error naming the file.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.squeeze = SqueezeDim(dim=-1)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim == 4 and img.shape[-1] == 1:
                img = self.squeeze(img)
            if img.ndim != 3:
                name = getattr(img, "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{name}: expected a 2D image (channel-first shape (C, H, W)), got {tuple(img.shape)}.")
            if img.shape[0] == 4:
                img = img[:3]
            if img.shape[0] > 1:
                img = img.mean(dim=0, keepdim=True)
            d[key] = img
        return d
