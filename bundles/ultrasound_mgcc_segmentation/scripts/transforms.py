# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Input normalisation to the network's contract: one channel, two spatial dimensions, the grey levels the
model was trained on (what may be an image and how it becomes 8-bit grayscale: ``image_contract``); and the mask
writer that keeps a NIfTI input's format."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import LoadImaged, MapTransform, SaveImaged, SqueezeDim

from .data import mask_name
from .image_contract import (
    EXPECTED_2D,
    RASTER_SUFFIXES,
    check_gray_levels,
    is_nifti,
    nifti_mask_like,
    nifti_problem,
    to_grayscale8,
)

__all__ = [
    "RASTER_SUFFIXES",
    "EXPECTED_2D",
    "to_grayscale8",
    "nifti_problem",
    "check_gray_levels",
    "LoadImageGrayscaled",
    "AsGrayscale2Dd",
    "SaveImageLikeInputd",
]


class LoadImageGrayscaled(LoadImaged):
    """``LoadImaged`` for ultrasound inputs: PNG, JPEG and BMP files are read as 8-bit grayscale by
    ``image_contract.to_grayscale8`` (the grey levels training saw, whatever the file's bit depth, palette or colour;
    turned by its EXIF orientation, as viewers show it), with that
    reader alone, so a broken file gives one error naming it; other formats (NIfTI, ...) go through MONAI's
    readers. Takes ``LoadImaged``'s arguments; metadata and axis order are ``LoadImaged``'s. MONAI Label and the
    Deploy app recognise it as a ``LoadImaged`` (its name contains ``LoadImage``: the Deploy bundle operator leaves
    loading to the app, which reads files with this transform)."""

    def __init__(self, keys: KeysCollection, **kwargs) -> None:
        super().__init__(keys, **kwargs)
        self.raster_reader = PILReader(converter=to_grayscale8)

    def __call__(self, data: Mapping[Hashable, str], reader=None) -> dict[Hashable, torch.Tensor]:
        paths = [str(data[key]) for key in self.key_iterator(dict(data)) if isinstance(data[key], (str, os.PathLike))]
        if reader is None and paths and all(os.path.splitext(p)[1].lower() in RASTER_SUFFIXES for p in paths):
            reader = self.raster_reader
        return super().__call__(data, reader)


class AsGrayscale2Dd(MapTransform):
    """Make channel-first images 1-channel 2D: average the channels of multi-channel images from other formats
    (alpha dropped) and drop trailing singleton spatial dimensions (one-slice NIfTI, also a 5D colour NIfTI; its
    recorded ``spatial_shape`` too, so a saved prediction is 2D). Anything else is an error naming the file. With
    ``gray_levels`` (images, not masks) the values are checked by ``check_gray_levels``.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, gray_levels: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.squeeze = SqueezeDim(dim=-1)
        self.gray_levels = gray_levels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            while img.ndim > 3 and img.shape[-1] == 1:
                img = self.squeeze(img)
                if isinstance(img, MetaTensor) and len(img.meta.get("spatial_shape", ())) > 2:
                    img.meta["spatial_shape"] = img.meta["spatial_shape"][:2]  # writers restore a 2D image
            if img.ndim != 3:
                name = getattr(img, "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{name}: channel-first shape {tuple(img.shape)} is not one 2D image; {EXPECTED_2D}.")
            if img.shape[0] == 4:
                img = img[:3]
            if img.shape[0] > 1:
                img = img.mean(dim=0, keepdim=True)
            if self.gray_levels:
                check_gray_levels(img, getattr(img, "meta", {}).get("filename_or_obj", key))
            d[key] = img
        return d


class SaveImageLikeInputd(SaveImaged):
    """``SaveImaged`` whose output format follows the input's: a NIfTI input's mask is written as NIfTI,
    ``<stem>_<postfix>.nii.gz`` (``data.mask_name``), on the input's voxel grid with its affine and header (values
    0/1, uint8), so it overlays the image in any NIfTI viewer; any other input's mask is written by ``SaveImaged``
    as configured (PNG). Takes ``SaveImaged``'s arguments. MONAI Label and the Deploy app drop it as they drop
    ``SaveImaged`` (a subclass, and its name contains ``SaveImage``): they write their own outputs."""

    def __init__(self, keys: KeysCollection, output_dir: str = "./", output_postfix: str = "trans", **kwargs) -> None:
        super().__init__(keys, output_dir=output_dir, output_postfix=output_postfix, **kwargs)
        self.nifti_dir, self.nifti_suffix = str(output_dir), f"_{output_postfix}.nii.gz"

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            source = str(getattr(d[key], "meta", {}).get("filename_or_obj", ""))
            if is_nifti(source):
                self.write_nifti(d[key], source)
            else:
                super().__call__({key: d[key]})
        return d

    def write_nifti(self, mask: torch.Tensor, source: str) -> str:
        """Write ``mask`` (1, W, H), on ``source``'s grid, as NIfTI with ``source``'s affine and header."""
        import nibabel as nib

        out = nifti_mask_like(source, np.asarray(torch.as_tensor(mask).detach().cpu(), dtype=np.float32))
        os.makedirs(self.nifti_dir, exist_ok=True)
        path = os.path.join(self.nifti_dir, mask_name(source, self.nifti_suffix))
        nib.save(out, path)
        return path
