"""Does a predicted mask show one clear lesion? The rule behind the report's lesion rates; and, for samples
generated from a lesion mask, does the trained model find the lesion where the generator was asked to draw it?

A mask shows one clear lesion when its largest connected component (8-connected) covers at least
``min_area`` of the image and at least ``min_share`` of all predicted lesion pixels. Counting any predicted
pixel is not enough: a model marks scattered blobs in speckle-only images, which this rule rejects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

MIN_AREA = 0.005
MIN_SHARE = 0.7


def has_clear_lesion(mask: np.ndarray, min_area: float = MIN_AREA, min_share: float = MIN_SHARE) -> bool:
    """True when the largest 8-connected component of ``mask > 0`` is one clear lesion (see the module doc)."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3), bool))
    if count == 0:
        return False
    sizes = np.bincount(labels.ravel())[1:]
    largest = sizes.max()
    return bool(largest >= min_area * labels.size and largest >= min_share * sizes.sum())


def lesion_rate(mask_files: Iterable[Path]) -> dict:
    """Share of the mask PNGs that show one clear lesion, with the counts."""
    files = sorted(Path(f) for f in mask_files)
    if not files:
        raise FileNotFoundError("no predicted masks to count lesions in")
    found = [has_clear_lesion(np.asarray(Image.open(f))) for f in files]
    return {
        "rate": sum(found) / len(found),
        "with_clear_lesion": sum(found),
        "images": len(found),
        "rule": {"min_area": MIN_AREA, "min_share": MIN_SHARE, "connectivity": 8},
    }


def mask_dice(sample_dir: Path, predictions: Path) -> dict[str, float]:
    """Per mask-conditioned sample (by file name): Dice between the trained model's mask
    (``<predictions>/<stem>_seg.png``) and the mask the sample was generated from (the sampler's manifest ``label``;
    both empty: 1). Empty for unconditioned samples."""
    samples = json.loads((Path(sample_dir) / "manifest.json").read_text())["samples"]
    pairs = {
        s["file"]: (Path(sample_dir) / s["label"], Path(predictions) / f"{Path(s['file']).stem}_seg.png")
        for s in samples
        if s.get("label")
    }
    if not pairs:
        return {}
    import torch
    from monai.metrics import compute_dice

    dice = {}
    for name, (asked, found) in pairs.items():
        a, b = (torch.as_tensor(np.asarray(Image.open(p)) > 0, dtype=torch.float32)[None, None] for p in (asked, found))
        if a.shape != b.shape:
            raise ValueError(
                f"{found}: predicted mask of shape {tuple(b.shape[2:])} for a sample mask of shape "
                f"{tuple(a.shape[2:])} ({asked})"
            )
        dice[name] = compute_dice(b, a, ignore_empty=False).item()
    return dice


def mask_agreement(sample_dir: Path, predictions: Path) -> dict | None:
    """Mean and spread of ``mask_dice`` over the samples; ``None`` for unconditioned samples."""
    dice = list(mask_dice(sample_dir, predictions).values())
    if not dice:
        return None
    return {"mean": float(np.mean(dice)), "std": float(np.std(dice)), "n": len(dice)}
