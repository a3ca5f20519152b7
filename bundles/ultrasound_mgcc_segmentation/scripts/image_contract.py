# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""The image contract: which files the model can segment, and how each becomes its 8-bit grayscale input.

One module decides, and every path asks it: ``mgcc prepare`` (training images and masks), this bundle's loader
(``transforms.LoadImageGrayscaled``, ``inference_datalist``), the MONAI Label app (its ``/infer`` check) and the
MONAI Deploy app (its input check and reader). So a file gets the same mask, or the same one-line refusal, from
``python -m monai.bundle run``, Slicer and the Deploy app. It needs nothing but numpy, torch and Pillow (nibabel
for NIfTI), so the apps import it from the bundle folder alone.

Accepted (``check_image``):

- PNG, JPEG, BMP (any case of suffix). Decoded fully (a truncated file is refused), then:
  EXIF orientation honoured (``ImageOps.exif_transpose``: the network sees, and the mask overlays, the image as
  viewers show it); palette expanded through its palette; 16-bit scaled ``v * 255 / 65535``; 1-bit to 0/255;
  alpha composited over black; RGB with equal channels kept, otherwise ITU-R BT.601 luma
  ``0.299 R + 0.587 G + 0.114 B``; rounded. Other pixel modes (32-bit float, CMYK, ...) are refused.
- NIfTI (``.nii``, ``.nii.gz``): one 2D image, (W, H), one slice (W, H, 1, ...), or a last 4th/5th dimension of 3
  or 4 colour channels; values that are 8-bit gray levels (``check_gray_levels``). A volume is refused.

Refused: a broken link, a missing or empty file, other suffixes. Each refusal is an ``ImageRefused`` whose text
is one line ``<file>: <reason>``; its ``kind`` lets a server choose a status (``missing``, ``format``,
``unreadable``, ``shape``, ``values``).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "RASTER_SUFFIXES",
    "NIFTI_SUFFIXES",
    "IMAGE_SUFFIXES",
    "EXPECTED_2D",
    "ImageRefused",
    "is_nifti",
    "check_image",
    "image_problem",
    "open_raster",
    "raster_size",
    "image_size",
    "nifti_mask_like",
    "channels",
    "grayscale8",
    "read_raster",
    "to_grayscale8",
    "nifti_problem",
    "check_gray_levels",
]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = RASTER_SUFFIXES + NIFTI_SUFFIXES
#: what every refusal of an input's shape says the model takes
EXPECTED_2D = "the model segments 2D images (H x W, or H x W x 1/3)"
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
EXIF_ORIENTATION = 0x0112


class ImageRefused(ValueError):
    """A file the model cannot segment: ``str()`` is one line naming it, ``reason`` the part after the name."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = str(path), reason, kind


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _unreadable(path: str | os.PathLike, error: Exception) -> ImageRefused:
    return ImageRefused(path, f"unreadable or truncated image ({type(error).__name__}: {error})", "unreadable")


def oriented(image: Image.Image, name: str | os.PathLike) -> tuple[Image.Image, list[str]]:
    """The decoded image turned as its EXIF orientation says (a viewer shows it so), and a note when it was."""
    try:
        image.load()
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        if orientation in (None, 1):
            return image, []
        turned = ImageOps.exif_transpose(image)
    except Exception as error:  # any decoder failure: the file cannot be used
        raise _unreadable(name, error) from None
    return turned, [f"EXIF orientation {orientation} applied (the image as viewers show it)"]


def open_raster(path: str | os.PathLike) -> tuple[Image.Image, list[str]]:
    """A PNG/JPEG/BMP decoded fully (truncation is found now), turned by its EXIF orientation, with notes."""
    try:
        with Image.open(path) as image:
            image.load()
            turned, notes = oriented(image, path)
            return (turned.copy() if turned is image else turned), notes
    except ImageRefused:
        raise
    except Exception as error:  # any decoder failure: the file cannot be used
        raise _unreadable(path, error) from None


def raster_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a raster image as viewers show it (EXIF orientation 5..8 swap the stored sides)."""
    with Image.open(path) as image:
        width, height = image.size
        return (height, width) if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8) else (width, height)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an accepted image: a raster's as viewers show it, a NIfTI's first two voxel axes (i, j)."""
    if is_nifti(path):
        import nibabel as nib

        shape = nib.load(str(path)).shape
        return int(shape[0]), int(shape[1])
    return raster_size(path)


def channels(image: Image.Image, name: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Pixel values as float (H, W, C), C in {1, 3}, on 0..255: palette expanded, 16-bit scaled, 1-bit to 0/255,
    alpha composited over black; with a note for each lossy conversion."""
    notes = []
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
        notes.append("palette image converted through its palette")
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise ImageRefused(name, f"pixel values outside 0..65535 in mode {image.mode}", "format")
        notes.append("16-bit image scaled to 8 bits (v * 255 / 65535)")
        return (values * 255.0 / 65535.0)[..., None], notes
    if image.mode == "1":
        return np.asarray(image, dtype=np.float64)[..., None] * 255.0, notes
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageRefused(
            name, f"unsupported pixel mode {image.mode}; give an 8- or 16-bit grayscale, RGB or palette image", "format"
        )
    values = np.asarray(image, dtype=np.float64)
    values = values[..., None] if values.ndim == 2 else values
    if image.mode in ("LA", "RGBA"):
        alpha, values = values[..., -1:], values[..., :-1]
        if np.any(alpha < 255):
            values = values * alpha / 255.0
            notes.append("alpha channel composited over black")
    return values, notes


def grayscale8(image: Image.Image, name: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """The network's 8-bit grayscale (H, W) of a decoded raster image, as viewers show it, with the notes of the
    conversions applied (see the module docstring)."""
    image, notes = oriented(image, name)
    values, more = channels(image, name)
    notes += more
    if values.shape[-1] == 3:
        if np.all(values == values[..., :1]):
            values = values[..., :1]
        else:
            values = (values @ LUMA_WEIGHTS)[..., None]
            notes.append("RGB image with differing channels converted with BT.601 luma")
    return np.clip(np.rint(values[..., 0]), 0, 255).astype(np.uint8), notes


def read_raster(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """``grayscale8`` of a PNG/JPEG/BMP file."""
    image, notes = open_raster(path)
    pixels, more = grayscale8(image, path)
    return pixels, notes + more


def to_grayscale8(image: Image.Image) -> Image.Image:
    """``grayscale8`` as an 8-bit PIL image: the converter of the bundle's ``PILReader``."""
    pixels, _ = grayscale8(image, getattr(image, "filename", "") or "image")
    return Image.fromarray(pixels, mode="L")


def check_gray_levels(img: torch.Tensor, name: str) -> None:
    """The network learned 8-bit gray levels (0..255, scaled to 0..1 by the configs). Values that cannot be such
    levels (NaN or infinity, below 0 or above 255, all within 0..1 as in a normalised float NIfTI) would give a
    confident wrong mask, so they are refused naming the file; a blank image (one gray level) is warned about."""
    values = torch.as_tensor(img).float()
    if not torch.isfinite(values).all():
        raise ImageRefused(name, "holds NaN or infinite values; give 8-bit gray levels 0..255.", "values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise ImageRefused(
            name,
            f"values {low:g}..{high:g} are outside the 8-bit gray levels 0..255 the model "
            "was trained on; rescale the image to 0..255 (e.g. its display window) first.",
            "values",
        )
    if 0 < high <= 1 and values.is_floating_point() and not torch.equal(values, values.round()):
        raise ImageRefused(
            name,
            f"values {low:g}..{high:g} look normalised to 0..1; the model expects 8-bit gray "
            "levels 0..255: multiply by 255 first.",
            "values",
        )
    if high == low:
        warnings.warn(f"{name}: blank image (every pixel {low:g}): the mask says nothing about it.", stacklevel=2)


def nifti_grid(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The voxel grid of a NIfTI image's mask: its shape without a last dimension of 3 or 4 colour channels."""
    return shape[:-1] if len(shape) >= 4 and shape[-1] in (3, 4) else shape


def nifti_mask_like(source: str | os.PathLike, mask: np.ndarray):
    """A mask of the NIfTI image ``source`` (values > 0: lesion; any array of its grid's size in (W, H) order) as a
    0/1 uint8 ``nibabel.Nifti1Image`` on ``source``'s voxel grid with its affine and header: NIfTI in, NIfTI out, so
    the mask overlays the image in any NIfTI viewer."""
    import nibabel as nib

    image = nib.load(str(source))
    grid = nifti_grid(tuple(int(n) for n in image.shape))
    values = np.asarray(mask, dtype=np.float32)
    if values.size != int(np.prod(grid)):
        raise ValueError(f"{source}: mask of shape {values.shape} does not fit the image grid {grid}")
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image((values.reshape(grid) > 0).astype(np.uint8), image.affine, header=header)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["cal_min"], out.header["cal_max"] = 0, 1
    return out


def check_nifti(path: str | os.PathLike) -> None:
    """Refuse a NIfTI file that is not one 2D image of 8-bit gray levels: unreadable, a volume, bad values."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
    except Exception as error:  # any header failure: the file cannot be used
        raise ImageRefused(path, f"unreadable NIfTI file ({type(error).__name__}: {error})", "unreadable") from None
    if len(shape) < 2 or any(n != 1 for n in nifti_grid(shape)[2:]):
        raise ImageRefused(
            path,
            f"a {len(shape)}D image of {' x '.join(map(str, shape))} voxels; {EXPECTED_2D}: give one slice per file",
            "shape",
        )
    try:
        values = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # a truncated data block
        raise ImageRefused(path, f"unreadable NIfTI file ({type(error).__name__}: {error})", "unreadable") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a blank image is warned about once, by the transform
        check_gray_levels(torch.as_tensor(values), str(path))


def nifti_problem(path: str | os.PathLike) -> str | None:
    """Why a NIfTI file cannot be segmented, as one line naming it (None for a usable one and for other formats)."""
    if not is_nifti(path):
        return None
    try:
        check_nifti(path)
    except ImageRefused as refused:
        return str(refused)
    return None


def check_image(path: str | os.PathLike) -> None:
    """Raise ``ImageRefused`` unless ``path`` is a file the model can segment (see the module docstring)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise ImageRefused(path, f"broken link: its target {os.readlink(path)} does not exist", "missing")
    if not os.path.isfile(path):
        raise ImageRefused(path, "no such file", "missing")
    if os.path.getsize(path) == 0:
        raise ImageRefused(path, "empty file (0 bytes)", "unreadable")
    if is_nifti(path):
        check_nifti(path)
    elif str(path).lower().endswith(RASTER_SUFFIXES):
        read_raster(path)
    else:
        suffix = os.path.splitext(str(path))[1] or "(none)"
        raise ImageRefused(path, f"unsupported file type {suffix}; give a PNG, JPEG, BMP or NIfTI image", "format")


def image_problem(path: str | os.PathLike) -> str | None:
    """``check_image``'s refusal as one line, or None for a file the model can segment."""
    try:
        check_image(path)
    except ImageRefused as refused:
        return str(refused)
    return None
