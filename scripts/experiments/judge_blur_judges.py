"""One-off (2026-11-27): which images each trained demo model (the "judge" of the lesion rule) finds one clear
lesion in, for the same image sets, and paired differences between judges and between sample sets.

Reads the `<tag>_<set>_pred/*_seg.png` folders that scripts/experiments/ae_lesion_ceiling_rate.py wrote (moved
next to its `diag/` folder, one tag per judge) and writes one JSON:

    python scripts/experiments/judge_blur_judges.py outputs/judgecmp outputs/judgecmp2 \\
        docs/results/demo/judge_blur/judges.json
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mgcc.lesions import has_clear_lesion

JUDGES = {
    "s0": "flips + rotations, seed 0",
    "s1": "flips + rotations, seed 1",
    "blur": "+ Gaussian blur (p 0.3), seed 0",
    "blur_s1": "+ Gaussian blur (p 0.3), seed 1",
}
SETS = {
    "raw64": "real phantom images (train, unlabeled, test sections)",
    "recon": "the same images through the autoencoder",
    "synthetic": "48 samples, raw diffusion weights",
    "ema99": "48 samples, EMA weights (decay 0.99) of the same training",
}


def found(folder: Path) -> dict[str, bool]:
    return {p.name: has_clear_lesion(np.asarray(Image.open(p)) > 127) for p in sorted(folder.glob("*_seg.png"))}


def per_image(roots: list[Path], judge: str, image_set: str) -> dict[str, bool]:
    """`<set folder>/<file>` -> one clear lesion, keyed without the judge tag so that judges pair up per image."""
    result = {}
    for root in roots:
        for folder in sorted(root.glob(f"{judge}_{image_set}*_pred")):
            result.update({f"{folder.name.removeprefix(judge + '_')}/{k}": v for k, v in found(folder).items()})
    return result


def paired(a: dict[str, bool], b: dict[str, bool], rng: np.random.Generator) -> dict:
    """b - a over the images both have, with a bootstrap 95% interval over images."""
    keys = sorted(set(a) & set(b))
    diff = np.array([float(b[k]) - float(a[k]) for k in keys])
    boots = [rng.choice(diff, diff.size).mean() for _ in range(10_000)]
    return {
        "n": len(keys),
        "mean": float(diff.mean()),
        "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
    }


def main() -> None:
    roots, out = [Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1])
    rng = np.random.default_rng(0)
    tables = {j: {s: per_image(roots, j, s) for s in SETS} for j in JUDGES}
    rates = {
        j: {s: {"with_clear_lesion": sum(t.values()), "images": len(t)} for s, t in sets.items()}
        for j, sets in tables.items()
    }
    blur_vs_plain = {
        f"{plain} -> {blur}": {s: paired(tables[plain][s], tables[blur][s], rng) for s in SETS}
        for plain, blur in (("s0", "blur"), ("s1", "blur_s1"))
    }
    ema = {}
    for j in JUDGES:  # same sample seeds and masks: match sample_<k>_seg.png across the two sets
        raw = {k.split("/")[-1]: v for k, v in tables[j]["synthetic"].items()}
        emav = {k.split("/")[-1]: v for k, v in tables[j]["ema99"].items()}
        ema[j] = paired(raw, emav, rng)
    result = {
        "judges": JUDGES,
        "image_sets": SETS,
        "rates": rates,
        "blur_minus_plain": blur_vs_plain,
        "ema99_minus_raw": ema,
    }
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"rates": rates, "blur_minus_plain": blur_vs_plain, "ema99_minus_raw": ema}, indent=1))


if __name__ == "__main__":
    main()
