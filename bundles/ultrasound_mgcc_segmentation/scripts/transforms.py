# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Input normalisation to the network's contract: one channel, two spatial dimensions, the grey levels the
model was trained on."""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import LoadImaged, MapTransform, SqueezeDim
from monai.utils import optional_import
from PIL import Image

__all__ = ["RASTER_SUFFIXES", "EXPECTED_2D", "to_grayscale8", "nifti_problem", "LoadImageGrayscaled",
           "AsGrayscale2Dd"]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: what every error about an input's shape says the model takes
EXPECTED_2D = "the model segments 2D images (H x W, or H x W x 1/3)"
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_grayscale8(image: Image.Image) -> Image.Image:
    """An 8-bit grayscale copy of a decoded raster image, by the rules `mgcc prepare` applies to training images:
    palette expanded through its palette; 16-bit scaled ``v * 255 / 65535``; 1-bit to 0/255; alpha composited over
    black; RGB with equal channels kept, otherwise ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``; rounded.
    A file that cannot be decoded (truncated, not an image) raises ``ValueError`` naming it."""
    name = getattr(image, "filename", "") or "image"
    try:
        image.load()
    except Exception as error:  # any decoder failure: the file cannot be used
        raise ValueError(f"{name}: unreadable or truncated image ({type(error).__name__}: {error})") from None
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)[..., None] * 255.0 / 65535.0
    elif image.mode == "1":
        values = np.asarray(image, dtype=np.float64)[..., None] * 255.0
    elif image.mode in ("L", "LA", "RGB", "RGBA"):
        values = np.asarray(image, dtype=np.float64)
        values = values[..., None] if values.ndim == 2 else values
        if image.mode in ("LA", "RGBA"):
            values = values[..., :-1] * values[..., -1:] / 255.0
    else:
        raise ValueError(f"{name}: unsupported pixel mode {image.mode}")
    if values.shape[-1] == 3:
        values = values[..., :1] if np.all(values == values[..., :1]) else (values @ LUMA_WEIGHTS)[..., None]
    return Image.fromarray(np.clip(np.rint(values[..., 0]), 0, 255).astype(np.uint8), mode="L")


def nifti_problem(path: str | os.PathLike) -> str | None:
    """Why a NIfTI file cannot be segmented, as one line naming it (None for a usable one and for other formats).

    Its shape: 2D (W, H), one slice (W, H, 1, ...), or a last 4th/5th dimension of 3 or 4 colour channels (MONAI
    reads it as channels; ``AsGrayscale2Dd`` averages them); a volume (W, H, D > 1) is refused: which slice would be
    meant? Then its values, as ``check_gray_levels`` checks them. ``inference_datalist`` asks this of every input,
    so such a file stops ``python -m monai.bundle run`` with this line before the model runs, not with a traceback
    from inside the evaluator."""
    if not str(path).lower().endswith(NIFTI_SUFFIXES):
        return None
    nib, found = optional_import("nibabel")
    if not found:
        return None  # MONAI's reader says nibabel is missing
    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
    except Exception as error:  # any header failure: the file cannot be used
        return f"{path}: unreadable NIfTI file ({type(error).__name__}: {error})"
    extra = shape[2:]
    if len(shape) >= 4 and extra[-1] in (3, 4):
        extra = extra[:-1]
    if len(shape) < 2 or any(n != 1 for n in extra):
        return f"{path}: a {len(shape)}D image of {' x '.join(map(str, shape))} voxels; {EXPECTED_2D}: give one slice per file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a blank image is warned about once, by the transform
            check_gray_levels(torch.as_tensor(np.asarray(image.dataobj, dtype=np.float32)), str(path))
    except ValueError as error:
        return str(error)
    except Exception as error:  # a truncated data block
        return f"{path}: unreadable NIfTI file ({type(error).__name__}: {error})"
    return None


class LoadImageGrayscaled(LoadImaged):
    """``LoadImaged`` for ultrasound inputs: PNG, JPEG and BMP files are read as 8-bit grayscale by
    ``to_grayscale8`` (the grey levels training saw, whatever the file's bit depth, palette or colour), with that
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


def check_gray_levels(img: torch.Tensor, name: str) -> None:
    """The network learned 8-bit gray levels (0..255, scaled to 0..1 by the configs). Values that cannot be such
    levels (NaN or infinity, below 0 or above 255, all within 0..1 as in a normalised float NIfTI) would give a
    confident wrong mask, so they are refused naming the file; a blank image (one gray level) is warned about."""
    values = torch.as_tensor(img).float()
    if not torch.isfinite(values).all():
        raise ValueError(f"{name}: holds NaN or infinite values; give 8-bit gray levels 0..255.")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise ValueError(f"{name}: values {low:g}..{high:g} are outside the 8-bit gray levels 0..255 the model "
                         "was trained on; rescale the image to 0..255 (e.g. its display window) first.")
    if 0 < high <= 1 and values.is_floating_point() and not torch.equal(values, values.round()):
        raise ValueError(f"{name}: values {low:g}..{high:g} look normalised to 0..1; the model expects 8-bit gray "
                         "levels 0..255: multiply by 255 first.")
    if high == low:
        warnings.warn(f"{name}: blank image (every pixel {low:g}): the mask says nothing about it.")
