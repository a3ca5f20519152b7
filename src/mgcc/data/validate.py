"""Read source PNGs into 8-bit grayscale images and binary masks, and check every case.

Conversion rules: the segmentation bundle's image contract (``scripts/image_contract.py``), so a training image
is the image the bundle, MONAI Label and the Deploy app would segment (each applied rule is reported as a warning,
except the lossless ones):
- EXIF orientation honoured (the image as viewers show it; its mask is turned the same way by its own EXIF).
- 1-bit image: 0/1 -> 0/255.
- 16-bit image: v8 = round(v16 * 255 / 65535) (full range to full range).
- palette image: expanded through its palette to RGB(A), then as below.
- RGB with identical channels: that channel (lossless); with differing channels: ITU-R BT.601 luma,
  round(0.299 R + 0.587 G + 0.114 B).
- alpha channel: composited over black (colour * alpha / 255); a fully opaque alpha is dropped silently.
- masks: a pixel's value is its largest colour channel (after the conversions above, so on 0..255). A mask with
  one non-zero value at most (0/1, 0/255, an RGB colour on black) is lesion where non-zero. A mask with more
  than one non-zero value (JPEG noise, soft edges) is reported as non-binary and binarized: lesion where the
  value is >= half its maximum value, or >= the `mask_threshold` given.
- a mask at another size than its image but of the same aspect ratio (another export of the same field of
  view) is binarized at its own size, then resampled to the image's size (nearest neighbour) and noted; a
  different aspect ratio is refused.
- images smaller than `MIN_SIDE` pixels on a side are refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from mgcc import SEG_BUNDLE
from mgcc.bundles import import_bundle_scripts
from mgcc.data.records import Problem, SourceCase

#: the smallest image side accepted, in pixels (smaller images are refused)
MIN_SIDE = 32
#: how every note about a thresholded mask starts
NON_BINARY = "non-binary mask"
#: how every note about a resampled mask starts
RESAMPLED = "mask resampled"
#: the reason of a mask whose size and aspect ratio differ from its image's (its detail: "<mask WxH> vs <image WxH>")
OTHER_SHAPE = (
    "mask of another size and aspect ratio than its image, so it cannot be resampled to it "
    "(mask vs image, width x height)"
)
#: mask and image aspect ratios (height / width) that differ by at most this fraction count as the same
ASPECT_TOLERANCE = 0.02
THUMBNAIL_SIDE = 32
#: a merged mask covering more than this share of its image is reported (a warning)
FULL_MASK = 0.95


class UnreadableFile(ValueError):
    """A file that cannot be decoded, or whose pixel format cannot be converted."""


def _contract() -> ModuleType:
    """The segmentation bundle's image contract (``scripts/image_contract.py``): what an image may be and how it
    becomes 8-bit grayscale, the rules the bundle, the MONAI Label app and the Deploy app apply to the same file."""
    return import_bundle_scripts(SEG_BUNDLE).image_contract


def open_png(path: Path) -> tuple[Image.Image, list[str]]:
    """Decode a PNG fully (so truncation is found now), turned by its EXIF orientation as the bundle turns it, and
    the notes; raise `UnreadableFile` with the contract's reason."""
    contract = _contract()
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise UnreadableFile(f"not a PNG file (format {image.format})")
        return contract.open_raster(path)
    except contract.ImageRefused as refused:
        raise UnreadableFile(refused.reason) from None
    except UnreadableFile:
        raise
    except Exception as error:  # any decoder failure means the file cannot be used
        raise UnreadableFile(f"unreadable or truncated image ({type(error).__name__}: {error})") from error


def _channels(path: Path) -> tuple[np.ndarray, list[str]]:
    """Pixel values as float (H, W, C), C in {1, 3}, by the contract's rules (palette, 16-bit, alpha), and notes."""
    image, notes = open_png(path)
    contract = _contract()
    try:
        values, more = contract.channels(image, path)
    except contract.ImageRefused as refused:
        raise UnreadableFile(refused.reason) from None
    return values, notes + more


def read_image(path: Path) -> tuple[np.ndarray, list[str]]:
    """An 8-bit grayscale image (H, W), exactly as the bundle's loader makes it, and the notes of the conversions."""
    image, notes = open_png(path)
    contract = _contract()
    try:
        pixels, more = contract.grayscale8(image, path)
    except contract.ImageRefused as refused:
        raise UnreadableFile(refused.reason) from None
    return pixels, notes + more


def read_mask(path: Path, threshold: float | None = None) -> tuple[np.ndarray, list[str]]:
    """A boolean mask (H, W) and notes. One non-zero value at most: lesion where non-zero. More (a non-binary
    mask, noted): lesion where the value (largest channel, 0..255) is >= `threshold`, default half the maximum."""
    values, _ = _channels(path)
    strength = values.max(axis=-1)
    levels = np.unique(strength[strength > 0])
    if levels.size <= 1:
        return strength > 0, []
    if threshold is not None and threshold > levels[-1]:
        raise UnreadableFile(
            f"--mask-threshold {threshold:g} is above this mask's largest value {levels[-1]:g}: the mask would be empty"
        )
    if threshold is None:
        return strength >= levels[-1] / 2.0, [
            f"{NON_BINARY} (several non-zero values); binarized at half its maximum value"
        ]
    return strength >= threshold, [
        f"{NON_BINARY} (several non-zero values); binarized at --mask-threshold {threshold:g}"
    ]


@dataclass(frozen=True)
class CheckedCase:
    """A case whose files were all read and agree; the facts the manifest and the split need."""

    case: SourceCase
    height: int
    width: int
    lesion_fraction: float
    sha256: str
    pixel_sha256: str
    mask_sha256: str = ""
    thresholded_masks: int = 0  # mask files binarized at a threshold (non-binary masks)
    resampled_masks: int = 0  # mask files at another size of the same aspect, resampled to the image
    thumbnail: np.ndarray = field(default=None, compare=False, repr=False)  # see `thumbnail`


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The image averaged down to 32x32, zero-mean and unit-norm (flattened): dot products are correlations."""
    small = Image.fromarray(image).resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    values = np.asarray(small, dtype=np.float64).ravel()
    values = values - values.mean()
    norm = np.linalg.norm(values)
    return values / norm if norm > 0 else values


def _fit_mask(mask: np.ndarray, image: np.ndarray, mask_path: Path) -> tuple[np.ndarray | None, Problem | None]:
    """The mask at the image's size: as it is, resampled (nearest) when only the resolution differs, else a problem."""
    if mask.shape == image.shape:
        return mask, None
    (mh, mw), (ih, iw) = mask.shape, image.shape
    if abs((mh / mw) / (ih / iw) - 1.0) > ASPECT_TOLERANCE:  # the sizes in `detail`: many such masks make one line
        return None, Problem(mask_path, OTHER_SHAPE, detail=f"{mw}x{mh} vs {iw}x{ih}")
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((iw, ih), Image.Resampling.NEAREST)
    note = Problem(mask_path, f"{RESAMPLED} to its image's size (nearest, same aspect ratio)", fatal=False)
    return np.asarray(resized) > 0, note


def load_case(case: SourceCase, mask_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Image (uint8) and merged mask (bool) of a case, with every problem found (fatal or warning).

    Unreadable files and images smaller than `MIN_SIDE` on a side come back as fatal problems (and empty
    arrays), never as exceptions. `mask_threshold`: see `read_mask`.
    """
    problems: list[Problem] = []
    try:
        image, notes = read_image(case.image)
        problems += [Problem(case.image, note, fatal=False) for note in notes]
        levels = len(np.unique(image))
        if levels <= 2:
            problems.append(
                Problem(
                    case.image,
                    f"image has {levels} gray level(s): blank, or a mask (are the images and masks folders swapped?)",
                    fatal=False,
                )
            )
        if min(image.shape) < MIN_SIDE:
            problems.append(
                Problem(
                    case.image,
                    f"image too small: {image.shape[1]}x{image.shape[0]} pixels (at least {MIN_SIDE} on each side)",
                )
            )
    except UnreadableFile as error:
        problems.append(Problem(case.image, str(error)))
        image = None
    merged = None
    for mask_path in case.masks:
        try:
            mask, notes = read_mask(mask_path, mask_threshold)
        except UnreadableFile as error:
            problems.append(Problem(mask_path, str(error)))
            continue
        problems += [Problem(mask_path, note, fatal=False) for note in notes]
        if image is not None:
            mask, problem = _fit_mask(mask, image, mask_path)
            problems += [problem] if problem is not None else []
            if mask is None:
                continue
        merged = mask if merged is None else merged | mask
    if image is None or merged is None or any(problem.fatal for problem in problems):
        return np.zeros((0, 0), np.uint8), np.zeros((0, 0), bool), problems
    if merged.mean() > FULL_MASK:
        problems.append(
            Problem(case.masks[0], f"mask covers {merged.mean():.0%} of the image: lesion everywhere?", fatal=False)
        )
    return image, merged, problems


def pixel_hash(image: np.ndarray) -> str:
    """sha256 of an image's shape and 8-bit pixels: equal for exact pixel duplicates."""
    digest = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_case(case: SourceCase, mask_threshold: float | None = None) -> tuple[CheckedCase | None, list[Problem]]:
    """Read a case once; return its facts (None when a fatal problem was found) and all problems."""
    image, mask, problems = load_case(case, mask_threshold)
    if any(problem.fatal for problem in problems):
        return None, problems
    facts = CheckedCase(
        case=case,
        height=int(image.shape[0]),
        width=int(image.shape[1]),
        lesion_fraction=round(float(mask.mean()), 6),
        sha256=file_sha256(case.image),
        pixel_sha256=pixel_hash(image),
        mask_sha256=pixel_hash(mask.astype(np.uint8)),
        thresholded_masks=sum(problem.reason.startswith(NON_BINARY) for problem in problems),
        resampled_masks=sum(problem.reason.startswith(RESAMPLED) for problem in problems),
        thumbnail=thumbnail(image),
    )
    return facts, problems
