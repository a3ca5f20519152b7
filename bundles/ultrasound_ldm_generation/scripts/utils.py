"""Data lists, checkpoints and image files: the bundle's small helpers, each failing with a message that names the
file."""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import load_decathlon_datalist
from PIL import Image


def flag(value: bool | str | int, name: str) -> bool:
    """A boolean config value; command-line overrides may arrive as the strings "true"/"false"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"config key '{name}' must be true or false, got {value!r}")


#: /proc/cpuinfo flags of x86 CPUs that run bfloat16 in hardware (AVX-512 BF16, AMX, AVX-NE-CONVERT)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions fast on this CPU (elsewhere it emulates them, several times slower
    than float32). ``MGCC_CPU_BFLOAT16=1`` or ``0`` in the environment overrides the check, as in the segmentation
    bundle."""
    forced = os.environ.get("MGCC_CPU_BFLOAT16", "").strip()
    if forced:
        return flag(forced, "MGCC_CPU_BFLOAT16")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:  # not Linux: oneDNN's word
        return True
    return any(name in flags for name in BF16_CPU_FLAGS)


def autocast_dtype(amp: bool | str, device: torch.device | str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype that config key ``amp`` asks for on ``device``, or ``None`` for float32.

    ``false``: float32. ``true``: bfloat16. ``auto``: bfloat16 where it is fast (a CUDA GPU that supports it, a CPU
    with bfloat16 in hardware), float32 elsewhere. float16 is never chosen (it would need gradient scaling)."""
    auto = isinstance(amp, str) and amp.strip().lower() == "auto"
    try:
        if not auto and not flag(amp, "amp"):
            return None
    except ValueError:
        raise ValueError(f"config key 'amp' must be true, false or auto, got {amp!r}") from None
    if torch.device(device).type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        fast = cpu_has_native_bfloat16()
    return torch.bfloat16 if fast or not auto else None


def autocast(dtype: torch.dtype | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type with ``dtype`` (from :func:`autocast_dtype`), or nothing for ``None``."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def load_sections(datalist: str, sections: Sequence[str], labels_from: Sequence[str] = ()) -> list[dict]:
    """Concatenate datalist sections as ``{"image", "class"}`` items; paths become absolute (they are relative to
    the datalist's folder). Labels are dropped, except those of the sections in ``labels_from`` (a mask-conditioned
    generator sees the labeled training masks; an unconditional one never sees a label)."""
    if not os.path.isfile(datalist):
        raise FileNotFoundError(
            f"datalist not found: {datalist} (run `mgcc prepare` or pass --datalist / --dataset_dir)"
        )
    items: list[dict] = []
    for section in sections:
        try:
            part = load_decathlon_datalist(datalist, is_segmentation=True, data_list_key=section)
        except ValueError as e:
            raise ValueError(f"{datalist}: cannot read section '{section}': {e}") from e
        items += part if section in labels_from else [{k: v for k, v in i.items() if k != "label"} for i in part]
    missing = [i[key] for i in items for key in ("image", "label") if key in i and not os.path.isfile(i[key])]
    if missing:
        raise FileNotFoundError(f"{datalist}: {len(missing)} file(s) listed but missing, first: {missing[0]}")
    if not items:
        raise ValueError(f"{datalist}: sections {list(sections)} hold no images")
    return items


def labeled_items(datalist: str) -> list[dict]:
    """The datalist's ``training`` (labeled) entries that list a label, with absolute paths: the lesion masks a
    mask-conditioned generator learns from and generates from."""
    return [item for item in load_sections(datalist, ["training"], labels_from=["training"]) if "label" in item]


def check_classes(items: Sequence[dict], class_names: Sequence[str], datalist: str) -> Sequence[dict]:
    """Make sure every item carries a known ``class`` (needed for class-conditional training)."""
    bad = [i for i in items if i.get("class") not in class_names]
    if bad:
        raise ValueError(
            f"{datalist}: {len(bad)} item(s) without a class in {list(class_names)}, first: {bad[0]['image']} "
            f"has class {bad[0].get('class')!r}"
        )
    return items


def load_weights(
    path: str, module: torch.nn.Module, key: str | None = None, what: str = "checkpoint"
) -> torch.nn.Module:
    """Load ``path`` (or its entry ``key``) into ``module`` with ``weights_only=True``; clear errors otherwise."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        if key not in state:
            raise KeyError(f"{path}: no entry '{key}' in the {what} (entries: {sorted(state)})")
        state = state[key]
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(
            f"{path}: the {what} does not fit the configured network; were the same width/size/class_conditional/"
            f"mask_conditional overrides used when it was trained? ({str(e).splitlines()[0]})"
        ) from e
    return module


def latest_checkpoint(ckpt_dir: str, prefix: str) -> str | None:
    """The complete resume checkpoint with the highest epoch written by ``CheckpointSaver(file_prefix=prefix)``.

    MONAI's ``CheckpointSaver`` writes in place, so a run killed while saving leaves a truncated file: it is
    skipped (with a warning) for the one before it, which the savers keep (``n_saved`` 2)."""

    def step(path: str) -> int:
        found = re.search(r"=(\d+)\.pt$", path)
        return int(found.group(1)) if found else -1

    paths = sorted(glob.glob(os.path.join(ckpt_dir, f"{prefix}_checkpoint_*.pt")), key=step, reverse=True)
    for path in paths:
        if zipfile.is_zipfile(path):  # torch.save writes a zip archive; one cut short lacks its end record
            return path
        warnings.warn(f"{path}: incomplete checkpoint (the run was stopped while saving it), skipped", stacklevel=2)
    return None


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (1, H, W) or (H, W) image with intensities in [0, 1] as an 8-bit (H, W) array (values clipped)."""
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"expected a single-channel 2D image, got shape {array.shape}")
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_grid(rows: Sequence[Sequence[torch.Tensor | np.ndarray]], path: str, pad: int = 2) -> str:
    """Tile rows of single-channel [0, 1] images into one 8-bit PNG (rows may differ in length)."""
    tiles = [[to_uint8(image) for image in row] for row in rows if len(row)]
    if not tiles:
        raise ValueError(f"no images to write into {path}")
    h, w = tiles[0][0].shape
    cols = max(len(row) for row in tiles)
    canvas = np.zeros((len(tiles) * (h + pad) + pad, cols * (w + pad) + pad), np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y : y + h, x : x + w] = tile
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def load_network(
    path: str,
    module: torch.nn.Module,
    padding_mode: str,
    device: torch.device | str,
    key: str | None = None,
    what: str = "checkpoint",
) -> torch.nn.Module:
    """A trained network ready to use: its weights from ``path`` (see :func:`load_weights`), the padding it was
    configured with, on ``device``, in eval mode."""
    return set_padding_mode(load_weights(path, module, key=key, what=what), padding_mode).to(device).eval()


#: where a bundle keeps a mask-conditional diffusion model beside its unconditional ``diffusion.pt``
MASK_DIFFUSION_FILE = "diffusion_mask.pt"


def diffusion_checkpoint(ckpt_dir: str, mask_conditional: bool) -> str:
    """The diffusion weights to sample with: ``diffusion_mask.pt`` for a mask-conditional run when the folder has one
    (the released bundle ships both models), else ``diffusion.pt`` (what training writes, in either mode)."""
    mask_model = os.path.join(ckpt_dir, MASK_DIFFUSION_FILE)
    if mask_conditional and os.path.isfile(mask_model):
        return mask_model
    return os.path.join(ckpt_dir, "diffusion.pt")


def diffusion_key(weights: str) -> str:
    """Entry of the diffusion checkpoint to sample with: ``"ema"`` (the weights' moving average) or ``"raw"``."""
    keys = {"ema": "diffusion_ema", "raw": "diffusion"}
    if weights not in keys:
        raise ValueError(f"config key 'diffusion_weights' must be 'ema' or 'raw', got {weights!r}")
    return keys[weights]


def set_padding_mode(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Pad every padded convolution of ``module`` with ``mode`` (``zeros``, ``reflect``, ``replicate``); the weights
    are unchanged, so a checkpoint loads either way. Zero padding lets a network tell the image border from the
    inside, which shows up as a frame around generated images."""
    if mode not in ("zeros", "reflect", "replicate"):
        raise ValueError(f"padding mode must be 'zeros', 'reflect' or 'replicate', got {mode!r}")
    for conv in module.modules():
        if isinstance(conv, torch.nn.modules.conv._ConvNd) and any(p > 0 for p in conv.padding if isinstance(p, int)):
            conv.padding_mode = mode
    return module
