"""One-off (2026-11-26): per-sample comparison of two demo runs with mask-conditioned samples of the same seeds.

For each sample: lesion contrast (mean intensity inside the mask it was generated from minus outside, gray levels)
and the Dice between that mask and the run's trained model's mask (`lesions/synthetic/*_seg.png`). Prints each
run's means and the paired differences (B - A) with a bootstrap 95% interval (10,000 resamples of samples).

    python scripts/experiments/sampler_clip_paired.py outputs/<run A> outputs/<run B>
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def per_sample(run: Path) -> dict[str, np.ndarray]:
    images = run / "sample" / "images"
    contrast, dice = [], []
    for record in json.loads((images / "manifest.json").read_text())["samples"]:
        image = np.asarray(Image.open(images / record["file"]).convert("L")).astype(float)
        mask = np.asarray(Image.open(images / record["label"]).convert("L")) > 127
        contrast.append(image[mask].mean() - image[~mask].mean())
        pred = np.asarray(Image.open(run / "lesions" / "synthetic" / f"{Path(record['file']).stem}_seg.png")) > 127
        dice.append(2 * (pred & mask).sum() / max(pred.sum() + mask.sum(), 1))
    return {"lesion contrast (levels)": np.array(contrast), "mask Dice": np.array(dice)}


a, b = (per_sample(Path(p)) for p in sys.argv[1:3])
rng = np.random.default_rng(0)
result = {}
for key in a:
    diff = b[key] - a[key]
    boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(10_000)]
    low, high = np.percentile(boot, [2.5, 97.5])
    result[key] = {"A": a[key].mean(), "B": b[key].mean(), "B - A": diff.mean(), "ci95": [low, high], "n": len(diff)}
    print(
        f"{key}: A {a[key].mean():.3f}  B {b[key].mean():.3f}  "
        f"B - A {diff.mean():+.3f} [{low:+.3f}, {high:+.3f}] (n={len(diff)})"
    )
print(json.dumps({"A": sys.argv[1], "B": sys.argv[2], **result}, default=float))
