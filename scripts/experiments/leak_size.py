"""How much a split with near-copies across it flatters test Dice (issue 31's "size of the leak").

For a model evaluated on a prepared dataset's test split, the test images are divided into those with a near-copy
(32x32 thumbnail correlation >= the threshold) in the train or validation split and those without, and each
group's mean Dice is reported with a 95% bootstrap interval of the difference. Writes JSON to stdout.

    python scripts/experiments/leak_size.py --prepared outputs/busi-oldsplit/prepare/dataset \
        --per-image outputs/busi-oldsplit/evaluate-supervised/evaluation/per_image.csv
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from mgcc.data.split import NEAR_DUPLICATE_CORRELATION
from mgcc.data.validate import read_image, thumbnail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--per-image", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=NEAR_DUPLICATE_CORRELATION)
    args = parser.parse_args()
    records = json.loads((args.prepared / "manifest.json").read_text())["images"]
    thumbs = np.stack([thumbnail(read_image(args.prepared / r["image"])[0]) for r in records])
    test = np.array([r["section"] == "test" for r in records])
    nearest = (thumbs[test] @ thumbs[~test].T).max(axis=1)
    tested = [r for r in records if r["section"] == "test"]
    leaked = {Path(r["image"]).stem: bool(c >= args.threshold) for r, c in zip(tested, nearest, strict=True)}
    with open(args.per_image, newline="") as f:
        dice = {Path(row["image"]).stem: float(row["dice"]) for row in csv.DictReader(f)}
    with_copy = np.array([d for k, d in dice.items() if leaked[k]])
    without = np.array([d for k, d in dice.items() if not leaked[k]])
    rng = np.random.default_rng(0)
    diffs = [
        rng.choice(with_copy, with_copy.size).mean() - rng.choice(without, without.size).mean() for _ in range(2000)
    ]
    print(
        json.dumps(
            {
                "threshold": args.threshold,
                "test_images": int(test.sum()),
                "with_near_copy_outside_test": {"n": int(with_copy.size), "mean_dice": float(with_copy.mean())},
                "without": {"n": int(without.size), "mean_dice": float(without.mean())},
                "difference": {
                    "mean": float(with_copy.mean() - without.mean()),
                    "ci95": np.percentile(diffs, [2.5, 97.5]).tolist(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
