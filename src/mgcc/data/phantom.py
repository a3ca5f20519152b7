"""Phantom B-mode breast ultrasound images with lesion masks, written in the BUSI folder layout.

Each image is simulated as echogenicity x speckle: layered tissue (skin, fat, gland, chest wall) with a
smooth texture, an irregular hypoechoic lesion (benign: smooth, wider than tall, posterior enhancement;
malignant: spiculated, posterior shadowing), fully developed speckle (Rayleigh amplitude from a blurred
complex Gaussian field), depth attenuation and log compression to 8 bits. `normal` images have no lesion
and an all-zero mask, as in BUSI.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mgcc.data.records import DatasetError, Problem

#: Share of each class in a phantom dataset (the rest is benign).
CLASS_SHARES = {"malignant": 0.35, "normal": 0.15}
CLASSES = ("benign", "malignant", "normal")
DYNAMIC_RANGE_DB = 50.0


def class_counts(n: int) -> dict[str, int]:
    """Images per class for an `n`-image phantom: about 50% benign, 35% malignant, 15% normal."""
    counts = {name: int(round(share * n)) for name, share in CLASS_SHARES.items()}
    counts["benign"] = n - sum(counts.values())
    return {name: counts[name] for name in CLASSES}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise low-passed with a Gaussian of `sigma` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def _tissue(rng: np.random.Generator, size: int) -> np.ndarray:
    """Echogenicity of lesion-free breast tissue: skin line, fat, glandular layer, chest wall."""
    depth = np.linspace(0.0, 1.0, size)[:, None] * np.ones((1, size))
    lateral = np.linspace(0.0, 1.0, size)[None, :]
    phase = rng.uniform(0, 2 * np.pi, size=3)
    fat_end = 0.22 + 0.05 * np.sin(2 * np.pi * lateral * rng.uniform(0.5, 1.5) + phase[0])
    wall_start = 0.78 + 0.05 * np.sin(2 * np.pi * lateral * rng.uniform(0.5, 1.5) + phase[1])
    echo = np.where(depth < fat_end, 0.45, 1.0)
    echo = np.where(depth > wall_start, 0.7 + 0.25 * np.sin(2 * np.pi * depth * 18 + phase[2]), echo)
    echo = np.where(depth < 0.04, 1.8, echo)
    texture = np.exp(0.35 * _smooth_noise(rng, (size, size), sigma=max(size / 20, 1.0)))
    return ndimage.gaussian_filter(echo, 1.0) * texture


def _lesion_mask(
    rng: np.random.Generator, size: int, malignant: bool, centre: tuple[float, float], scale: float = 1.0
) -> np.ndarray:
    """A boolean lesion mask around `centre` (row, column fractions): a star shape with a random harmonic outline."""
    radius = rng.uniform(0.09, 0.17) * size * scale
    centre_y, centre_x = centre[0] * size, centre[1] * size
    width_over_height = rng.uniform(0.8, 1.05) if malignant else rng.uniform(1.2, 1.6)
    harmonics = np.arange(2, 10 if malignant else 5)
    amplitudes = rng.uniform(0.0, 0.12 if malignant else 0.06, size=harmonics.size)
    phases = rng.uniform(0, 2 * np.pi, size=harmonics.size)
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    dy = (rows - centre_y) * np.sqrt(width_over_height)
    dx = (cols - centre_x) / np.sqrt(width_over_height)
    theta = np.arctan2(dy, dx)
    outline = radius * (
        1.0
        + np.sum(amplitudes[:, None, None] * np.cos(harmonics[:, None, None] * theta + phases[:, None, None]), axis=0)
    )
    return np.hypot(dy, dx) <= outline


def _posterior_factor(mask: np.ndarray, strength: float) -> np.ndarray:
    """Multiplicative change of echo below a lesion: > 1 is enhancement, < 1 is shadowing."""
    size = mask.shape[0]
    columns = ndimage.gaussian_filter1d(mask.any(axis=0).astype(float), max(size / 64, 0.5))
    below = np.cumsum(mask, axis=0) > 0
    below &= ~mask
    distance = np.cumsum(below, axis=0) / size
    fade = np.exp(-distance / 0.5) * below
    return 1.0 + strength * ndimage.gaussian_filter(fade * columns[None, :], 1.0)


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fully developed speckle: Rayleigh amplitude of a complex Gaussian field blurred by a small PSF."""
    sigma = (max(size / 256, 0.5), max(size / 128, 0.7))  # (axial, lateral) point-spread in pixels
    real = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    imag = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    amplitude = np.hypot(real, imag)
    return amplitude / amplitude.mean()


def _b_mode(echo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speckle, depth attenuation and log compression of an echogenicity map into an 8-bit image."""
    size = echo.shape[0]
    depth = np.linspace(0.0, 1.0, size)[:, None]
    amplitude = echo * _speckle(rng, size) * np.exp(-rng.uniform(1.0, 2.0) * depth)
    decibels = 20 * np.log10(amplitude + 1e-6)
    top = np.percentile(decibels, 99.5)
    scaled = np.clip((decibels - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def simulate_case(
    rng: np.random.Generator, size: int, label: str, second_lesion: bool = False
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One phantom image (uint8, `size` x `size`) and its lesion masks (bool; one all-False for `normal`)."""
    echo = _tissue(rng, size)
    if label == "normal":
        return _b_mode(echo, rng), [np.zeros((size, size), dtype=bool)]
    malignant = label == "malignant"
    centre = (rng.uniform(0.35, 0.6), rng.uniform(0.3, 0.7))
    masks = [_lesion_mask(rng, size, malignant, centre)]
    if second_lesion:  # a small lesion on the other side of the image
        far_side = (rng.uniform(0.3, 0.5), 0.15 if centre[1] > 0.5 else 0.85)
        extra = _lesion_mask(rng, size, malignant, far_side, scale=0.5) & ~ndimage.binary_dilation(
            masks[0], iterations=3
        )
        if extra.any():
            masks.append(extra)
    for mask in masks:
        soft = ndimage.gaussian_filter(mask.astype(float), 0.7)
        contrast = rng.uniform(0.04, 0.1)
        echo = echo * (1.0 - soft * (1.0 - contrast))
        echo = echo * _posterior_factor(mask, -0.75 if malignant else 1.2)
    return _b_mode(echo, rng), masks


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


#: written into every phantom dataset: its settings, and the mark that the folder may be replaced
PHANTOM_RECORD = "phantom.json"


def _clear_earlier_phantom(out: Path) -> None:
    """Make room in `out`: nothing there, or an earlier phantom dataset (removed). Anything else is the user's,
    and is refused (`FileExistsError`) before a file is written."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    entries = [entry for entry in out.iterdir()]
    if entries and not (out / PHANTOM_RECORD).is_file():
        raise FileExistsError(
            f"{out}: folder is not empty and holds no phantom dataset ({PHANTOM_RECORD}); "
            "choose a new or empty folder, nothing was written"
        )
    for entry in entries:
        if entry.is_dir() and entry.name in CLASSES:
            shutil.rmtree(entry)
        elif entry.name == PHANTOM_RECORD:
            entry.unlink()


def make_phantom_dataset(out: Path, n: int = 64, size: int = 128, seed: int = 0) -> Path:
    """Write `n` phantom images of `size` x `size` pixels in the BUSI layout under `out`; return `out`.

    Files are `<out>/<class>/<class> (<k>).png` with masks `<class> (<k>)_mask.png`; every sixth benign
    image has a second lesion in `<class> (<k>)_mask_1.png`. The same `seed` gives the same files. `out` must be
    new, empty or an earlier phantom dataset (replaced whole, so a smaller `n` leaves no older files).
    """
    if n < 1 or size < 16:
        option, value = ("--n", n) if n < 1 else ("--size", size)
        raise DatasetError([Problem(option, f"phantom needs n >= 1 and size >= 16, got {value}")])
    out = Path(out)
    _clear_earlier_phantom(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PHANTOM_RECORD).write_text(json.dumps({"n": n, "size": size, "seed": seed}) + "\n")
    for class_index, (label, count) in enumerate(class_counts(n).items()):
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, count + 1):
            rng = np.random.default_rng([seed, class_index, k])
            image, masks = simulate_case(rng, size, label, second_lesion=label == "benign" and k % 6 == 0)
            stem = f"{label} ({k})"
            _save_png(image, folder / f"{stem}.png")
            for index, mask in enumerate(masks):
                suffix = "_mask" if index == 0 else f"_mask_{index}"
                _save_png(mask.astype(np.uint8) * 255, folder / f"{stem}{suffix}.png")
    return out


def phantom(out: str, n: int = 64, size: int = 128, seed: int = 0) -> None:
    """CLI `mgcc phantom --out DIR [--n 64] [--size 128] [--seed 0]`: write a phantom BUSI-layout dataset."""
    try:
        root = make_phantom_dataset(Path(out), n=int(n), size=int(size), seed=int(seed))
    except (FileExistsError, DatasetError) as error:  # the command line's exit; the library raises the typed errors
        print(f"mgcc phantom: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    counts = ", ".join(f"{count} {label}" for label, count in class_counts(int(n)).items())
    print(f"phantom dataset: {counts} ({size}x{size}, seed {seed}) in {root}")
