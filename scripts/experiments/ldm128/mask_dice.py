"""Does the shipped segmentation model find the mask a sample was generated from? (issue 42, Must: Dice >= 0.7)

    python scripts/experiments/ldm128/mask_dice.py --samples <inference.json output_dir>/samples --out <dir>
    python scripts/experiments/ldm128/mask_dice.py --real outputs/generator-2.0-prep/busi --out <dir>

`--samples`: a folder written by the generator bundle's `inference.json` in the mask-conditional mode (its
`manifest.json` lists each sample with the mask it was generated from). `--real`: the labeled `training` images of a
prepared dataset, the same masks on real images (the reference). Either is scored by the segmentation bundle's own
`evaluate.json` with its defaults (flip TTA, its "no lesion" rule), which writes `evaluation/per_image.csv`; this
script adds `mask_dice.json`: mean Dice with a 95% bootstrap interval, median, and the share of images at Dice >= 0.7.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
SEG_BUNDLE = REPO / "bundles" / "ultrasound_mgcc_segmentation"
THRESHOLD = 0.7


def sample_datalist(samples: Path) -> dict:
    """The `test` section of a datalist: each sample image with the mask it was generated from."""
    manifest = json.loads((samples / "manifest.json").read_text())
    if not manifest["settings"].get("mask_conditional"):
        raise SystemExit(f"{samples / 'manifest.json'}: not mask-conditional samples (settings.mask_conditional false)")
    pairs = [(s["file"], s["label"]) for s in manifest["samples"]]
    return {"test": [{"image": str(samples / image), "label": str(samples / label)} for image, label in pairs]}


def real_datalist(prepared: Path) -> dict:
    """The `test` section of a datalist: the labeled training images of a prepared dataset with their masks."""
    training = json.loads((prepared / "datalist.json").read_text())["training"]
    pairs = [(d["image"], d["label"]) for d in training if d.get("label")]
    return {"test": [{"image": str(prepared / image), "label": str(prepared / label)} for image, label in pairs]}


def evaluate(data_dir: Path, datalist: dict, out: Path) -> Path:
    """Run the segmentation bundle's `evaluate.json` (shipped weights, defaults) on `datalist` (absolute paths: a
    datalist's relative paths would be read against its own folder); its per-image CSV."""
    out.mkdir(parents=True, exist_ok=True)
    datalist_path = out / "datalist.json"
    datalist_path.write_text(json.dumps(datalist, indent=1))
    configs = "['configs/train.json','configs/evaluate.json']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs]
    cmd += ["--dataset_dir", str(data_dir), "--datalist", str(datalist_path), "--output_dir", str(out)]
    cmd += ["--num_workers", "0"]
    with open(out / "evaluate.log", "w") as log:
        subprocess.run(cmd, cwd=SEG_BUNDLE, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out / "evaluation" / "per_image.csv"


def summary(per_image: Path, seed: int = 0) -> dict:
    """Mean Dice (95% bootstrap interval), median and the share at Dice >= THRESHOLD."""
    with open(per_image, newline="") as f:
        dice = np.array([float(r["dice"]) for r in csv.DictReader(f)])
    rng = np.random.default_rng(seed)
    boot = rng.choice(dice, size=(2000, dice.size)).mean(axis=1)
    return {
        "images": int(dice.size),
        "mean_dice": round(float(dice.mean()), 4),
        "mean_dice_ci95": [round(float(q), 4) for q in np.percentile(boot, [2.5, 97.5])],
        "median_dice": round(float(np.median(dice)), 4),
        f"share_dice_ge_{THRESHOLD}": round(float((dice >= THRESHOLD).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--samples", type=Path, help="mask-conditional samples folder (with manifest.json)")
    source.add_argument("--real", type=Path, help="prepared dataset: its labeled training images")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data_dir = (args.samples or args.real).resolve()
    datalist = sample_datalist(data_dir) if args.samples else real_datalist(data_dir)
    result = summary(evaluate(data_dir, datalist, args.out.resolve()))
    result["source"] = str(args.samples or args.real)
    (args.out / "mask_dice.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
