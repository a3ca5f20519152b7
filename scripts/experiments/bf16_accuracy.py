"""bfloat16 autocast (+ channels-last) against float32, paired per image.

Inference: the shipped segmentation model on BUSI's leak-free test split and STU-Hospital. Training (`--train RUN`):
RUN's segmentation stage trained again with the same settings and seed in bfloat16, scored on RUN's test split
against RUN's own float32 model. On a CPU without bfloat16 in hardware oneDNN runs bfloat16 through reference
kernels: slow, but the same rounding, so the accuracy (not the speed) carries over.

    python scripts/experiments/bf16_accuracy.py --run outputs/busi-release --train outputs/demo \
        --out docs/results/bf16_accuracy.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "ultrasound_mgcc_segmentation"


def evaluate(args_file: Path, amp: bool, out: Path) -> dict[str, float]:
    """Per-image Dice of the bundle's evaluate.json run with the given args file, `amp` and the shipped weights."""
    args = json.loads(args_file.read_text())
    args.update(output_dir=str(out), ckpt_dir=str(BUNDLE / "models"), amp=amp, channels_last=amp, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(args, indent=2))
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(out / "args.json")],
        cwd=BUNDLE,
        check=True,
        stdout=open(out / "log.txt", "w"),
        stderr=subprocess.STDOUT,
    )
    return per_image(out / "evaluation" / "per_image.csv")


def train_again(run: Path, work: Path, amp: bool) -> dict[str, float]:
    """RUN's segmentation stage trained again with channels-last, in bfloat16 or float32 (same args, seed and data;
    channels-last draws the dropout masks in memory order, so the float32 run is the control that differs from the
    bfloat16 run in the rounding only), then its evaluate stage in float32."""
    train = json.loads((run / "segmentation-mgcc-synthetic" / "args.json").read_text())
    train.update(
        output_dir=str(work),
        ckpt_dir=str(work / "models"),
        amp=amp,
        channels_last=True,
        resume=False,
        show_progress=False,
    )
    work.mkdir(parents=True, exist_ok=True)
    (work / "train_args.json").write_text(json.dumps(train, indent=2))
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(work / "train_args.json")],
        cwd=BUNDLE,
        check=True,
        stdout=open(work / "train_log.txt", "w"),
        stderr=subprocess.STDOUT,
    )
    evaluate_args = json.loads((run / "evaluate-mgcc-synthetic" / "args.json").read_text())
    evaluate_args.update(
        output_dir=str(work / "evaluate"),
        ckpt_dir=str(work / "models"),
        amp=False,
        channels_last=False,
        show_progress=False,
    )
    (work / "evaluate_args.json").write_text(json.dumps(evaluate_args, indent=2))
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(work / "evaluate_args.json")],
        cwd=BUNDLE,
        check=True,
        stdout=open(work / "evaluate_log.txt", "w"),
        stderr=subprocess.STDOUT,
    )
    return per_image(work / "evaluate" / "evaluation" / "per_image.csv")


def per_image(path: Path) -> dict[str, float]:
    with open(path) as f:
        return {row["image"]: float(row["dice"]) for row in csv.DictReader(f)}


def paired(fp32: dict[str, float], bf16: dict[str, float], seed: int = 0) -> dict:
    """Mean Dice of each, the mean paired difference (bf16 - fp32) with a 95% bootstrap interval, the largest change."""
    names = sorted(fp32)
    a, b = np.array([fp32[n] for n in names]), np.array([bf16[n] for n in names])
    diff = b - a
    rng = np.random.default_rng(seed)
    boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(10000)]
    return {
        "n": len(names),
        "fp32_mean_dice": a.mean(),
        "bf16_mean_dice": b.mean(),
        "difference": diff.mean(),
        "difference_95ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "largest_abs_change": float(np.abs(diff).max()),
        "images_changed_over_0.01": int((np.abs(diff) > 0.01).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "outputs" / "busi-release")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "bf16_accuracy.json")
    parser.add_argument("--train", type=Path, help="a run (e.g. outputs/demo) whose segmentation to train in bf16")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bf16-accuracy")
    opts = parser.parse_args()
    results = json.loads(opts.out.read_text()) if opts.out.is_file() else {}
    sets = {
        "busi_test": opts.run / "evaluate-mgcc-synthetic" / "args.json",
        "stu_hospital": opts.run / "external" / "STU-Hospital-all-segmentation" / "evaluate" / "args.json",
    }
    for name, args_file in sets.items():
        if name in results:
            continue  # measured earlier
        dice = {
            precision: evaluate(args_file, precision == "bf16", opts.work / name / precision)
            for precision in ("fp32", "bf16")
        }
        results[name] = paired(dice["fp32"], dice["bf16"])
        print(name, json.dumps(results[name]))
    if opts.train:
        dice = {"fp32": per_image(opts.train / "evaluate-mgcc-synthetic" / "evaluation" / "per_image.csv")}
        for precision in ("bf16_channels_last", "fp32_channels_last"):
            folder = opts.work / f"training_{precision}"
            done = folder / "evaluate" / "evaluation" / "per_image.csv"
            dice[precision] = (
                per_image(done) if done.is_file() else train_again(opts.train, folder, "bf16" in precision)
            )
        results[f"training_{opts.train.name}"] = {
            "bf16_channels_last_vs_fp32_channels_last": paired(dice["fp32_channels_last"], dice["bf16_channels_last"]),
            "fp32_channels_last_vs_fp32 (another dropout draw)": paired(dice["fp32"], dice["fp32_channels_last"]),
            "bf16_channels_last_vs_fp32": paired(dice["fp32"], dice["bf16_channels_last"]),
        }
        print("training", json.dumps(results[f"training_{opts.train.name}"], default=float))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(
        json.dumps(
            {"model": "bundles/ultrasound_mgcc_segmentation/models/model.pt", **results}, indent=2, default=float
        )
    )


if __name__ == "__main__":
    main()
