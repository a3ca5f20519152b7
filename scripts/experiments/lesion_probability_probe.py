"""Can a probability threshold separate missed lesions from lesion-free images? Per image of a prepared split: the
highest lesion probability (flip TTA on) and Dice / lesion found / left empty at thresholds 0.5 to 0.1.

    python scripts/experiments/lesion_probability_probe.py outputs/release-2.0/mgcc-batch-dice-6000/models \
        outputs/release-2.0-levers/busi validation --out outputs/release-2.0/probe-mgcc-validation.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release_evaluation import network_and_dataset  # noqa: E402

THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)


def probe(models: Path, data: Path, section: str) -> list[dict]:
    """One row per image of `section`: lesion or not, max probability, and per-threshold pixels, Dice, found."""
    network, dataset = network_and_dataset(models, data, [section], flip_tta=True)
    rows = []
    with torch.no_grad():
        for item in dataset:
            prob = torch.sigmoid(network(item["image"][None].float()))[0, 0]
            truth = item["label"][0] > 0
            row = {"lesion": bool(truth.any()), "max_probability": float(prob.max())}
            for t in THRESHOLDS:
                mask = prob >= t
                overlap, total = float((mask & truth).sum()), float(mask.sum() + truth.sum())
                row[str(t)] = {"pixels": int(mask.sum()), "dice": 1.0 if total == 0 else 2 * overlap / total}
                row[str(t)]["found"] = overlap > 0
            rows.append(row)
    return rows


def summary(rows: list[dict]) -> None:
    """Print Dice, lesions found and lesion-free left empty per threshold, and the max probabilities to compare."""
    lesion = [r for r in rows if r["lesion"]]
    free = [r for r in rows if not r["lesion"]]
    for t in map(str, THRESHOLDS):
        print(
            f"t={t}: Dice {np.mean([r[t]['dice'] for r in rows]):.3f}, lesions found "
            f"{sum(r[t]['found'] for r in lesion)} of {len(lesion)}, left empty "
            f"{sum(r[t]['pixels'] == 0 for r in free)} of {len(free)}"
        )
    print(
        "max probability, lesions missed at 0.5:",
        sorted(round(r["max_probability"], 3) for r in lesion if not r["0.5"]["found"]),
    )
    print("max probability, lesion-free images:", sorted(round(r["max_probability"], 3) for r in free))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("section")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = probe(args.models, args.data, args.section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows))
    summary(rows)


if __name__ == "__main__":
    main()
