"""The release tables of docs/results.md, from the runs' own files (nothing typed by hand).

python scripts/experiments/release_table.py --run outputs/busi-release --old-split outputs/busi-oldsplit
"""

import argparse
import json
from pathlib import Path

from mgcc.compare import paired_dice_differences

#: variant -> (training stage, evaluation stage, STU evaluation folder under <run>/external)
VARIANTS = {
    "supervised-only": ("segmentation-supervised", "evaluate-supervised", "STU-Hospital-all-segmentation-supervised"),
    "MGCC, synthetic unlabeled": (
        "segmentation-mgcc-synthetic",
        "evaluate-mgcc-synthetic",
        "STU-Hospital-all-segmentation",
    ),
}


def _summary(folder: Path) -> dict:
    return json.loads((folder / "evaluation" / "summary.json").read_text())


def _cell(summary: dict, metric: str) -> str:
    return f"{summary[metric]['mean']:.3f} ± {summary[metric]['std']:.3f}"


def _best_validation(stage: Path) -> float:
    rows = [line.strip().split(",") for line in (stage / "training_history.csv").read_text().splitlines()[1:]]
    return max(float(row[-1]) for row in rows if row[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--old-split", type=Path, required=True)
    args = parser.parse_args()
    lines = [
        "| model | best validation Dice | BUSI test Dice (131) | IoU | HD95 (px @128) | STU-Hospital Dice (42) "
        "| STU IoU | training time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_image = {}
    for name, (train, evaluate, stu) in VARIANTS.items():
        busi, external = _summary(args.run / evaluate), _summary(args.run / "external" / stu / "evaluate")
        seconds = json.loads((args.run / train / "stage.json").read_text())["seconds"]
        lines.append(
            f"| {name} | {_best_validation(args.run / train):.3f} | {_cell(busi, 'dice')} | "
            f"{_cell(busi, 'iou')} | {_cell(busi, 'hd95')} | {_cell(external, 'dice')} | "
            f"{_cell(external, 'iou')} | {seconds:.0f} s |"
        )
        per_image[name] = {
            "BUSI test": [args.run / evaluate / "evaluation" / "per_image.csv"],
            "STU-Hospital": [args.run / "external" / stu / "evaluate" / "evaluation" / "per_image.csv"],
        }
    lines += [
        "",
        "| paired difference (MGCC − supervised-only), per image | mean [95% bootstrap CI] | better / worse |",
        "|---|---|---|",
    ]
    first, second = list(VARIANTS)
    for test_set in ("BUSI test", "STU-Hospital"):
        d = paired_dice_differences({first: per_image[first][test_set], second: per_image[second][test_set]}, first)[
            second
        ]
        lines.append(
            f"| {test_set} | {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
            f"{d['better']} / {d['worse']} of {d['n']} |"
        )
    old = _summary(args.old_split / "evaluate-supervised")
    new = _summary(args.run / "evaluate-supervised")
    lines += [
        "",
        "| supervised-only, same recipe | test images | test Dice |",
        "|---|---|---|",
        f"| old split (exact duplicates grouped only) | {old['n']} | {_cell(old, 'dice')} |",
        f"| leak-free split (near-copies grouped) | {new['n']} | {_cell(new, 'dice')} |",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
