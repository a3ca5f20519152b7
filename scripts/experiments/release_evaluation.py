"""The release table of segmentation 2.0: each model scored by the bundle's own `evaluate.json`, the "no lesion" rule
chosen on BUSI validation, then BUSI test (lesion and lesion-free images) and STU-Hospital, paired per image.

    python scripts/experiments/release_evaluation.py --busi outputs/release-2.0-levers/busi \
        --stu outputs/release-2.0-levers/stu --model 1.x=outputs/release-2.0/shipped-1.x/models \
        --model mgcc=outputs/release-2.0/mgcc-lesion-aware-6000/models --baseline 1.x \
        --out docs/results/release-2.0 --operating-points mgcc

Every model is evaluated with `flip_tta` off and on and `min_lesion_fraction` 0 (`<work>/<model>/<set>-<tta>/`,
reused when present). The evaluation runs at the network's 128x128, where the rule acts, so the rule's effect is
computed from `per_image.csv` (`pred_pixels`): a prediction under the share t of the image becomes empty (Dice 1 on
a lesion-free image, 0 on a lesion image). t is chosen per model and TTA setting on BUSI validation as the one with
the best mean Dice over all images (lesion-free ones included; ties: the smaller t), then read on test and STU.
`--operating-points NAME` adds, for NAME, what every share of the grid gives on each set (lesion-free images left
empty, lesions found, Dice over all images), the trade a user picks `min_lesion_fraction` from.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
SEG_BUNDLE = REPO / "bundles" / "ultrasound_mgcc_segmentation"
#: candidate shares of the image below which a prediction is "no lesion"
FRACTION_GRID = [0.0, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05]
#: evaluation set -> (dataset option, datalist sections)
SETS = {
    "busi_validation": ("busi", ["validation"]),
    "busi_test": ("busi", ["test"]),
    "stu_hospital": ("stu", ["training", "validation", "test"]),
}


def sections_expr(sections: list[str]) -> str:
    """The bundle expression for the datalist entries of `sections`."""
    return f"$sum((scripts.data.datalist_section(@datalist, s) for s in {sections!r}), [])"


def network_and_dataset(models: Path, data: Path, sections: list[str], flip_tta: bool) -> tuple:
    """The bundle's network (weights of `models`, eval mode) and its validation dataset on `sections` of `data`."""
    sys.path.insert(0, str(SEG_BUNDLE))
    parser = ConfigParser()
    parser.read_config([str(SEG_BUNDLE / "configs" / "train.json"), str(SEG_BUNDLE / "configs" / "evaluate.json")])
    parser.update({"bundle_root": str(SEG_BUNDLE), "dataset_dir": str(data), "ckpt_dir": str(models)})
    parser.update({"flip_tta": flip_tta, "num_workers": 0, "validate#dataset#data": sections_expr(sections)})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    return network.eval(), parser.get_parsed_content("validate#dataset")


def evaluate(models: Path, data: Path, sections: list[str], flip_tta: bool, out: Path) -> Path:
    """`per_image.csv` of the bundle's evaluate.json on `sections` of the prepared `data` (run unless present)."""
    result = out / "evaluation" / "per_image.csv"
    if result.is_file():
        return result
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/train.json','configs/evaluate.json']",
        "--dataset_dir",
        str(data),
        "--ckpt_dir",
        str(models),
        "--output_dir",
        str(out),
        "--flip_tta",
        str(flip_tta).lower(),
        "--min_lesion_fraction",
        "0",
        "--validate#dataset#data",
        sections_expr(sections),
        "--num_workers",
        "0",
    ]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "evaluate.log", "w") as log:
        subprocess.run(cmd, cwd=SEG_BUNDLE, stdout=log, stderr=subprocess.STDOUT, check=True)
    return result


def read_rows(path: Path) -> list[dict]:
    """Per image: name, class, dice, label and predicted pixels, overlap, share of the image predicted."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    side = 128 * 128  # the evaluation's size: the network's input
    return [
        {
            "image": Path(r["image"]).name,
            "class": r.get("class", ""),
            "dice": float(r["dice"]),
            "label_pixels": int(r["label_pixels"]),
            "pred_pixels": int(r["pred_pixels"]),
            "overlap_pixels": int(r["overlap_pixels"]),
            "fraction": int(r["pred_pixels"]) / side,
        }
        for r in rows
    ]


def with_rule(rows: list[dict], fraction: float) -> list[dict]:
    """The rows as `min_lesion_fraction = fraction` would have scored them."""
    out = []
    for r in rows:
        if fraction and r["fraction"] < fraction:
            r = {**r, "pred_pixels": 0, "overlap_pixels": 0, "dice": 1.0 if r["label_pixels"] == 0 else 0.0}
        out.append(r)
    return out


def metrics(rows: list[dict]) -> dict:
    """Mean Dice over all images, Dice on lesion images, sensitivity, specificity (as `detection_metrics`)."""
    lesion = [r for r in rows if r["label_pixels"] > 0]
    free = [r for r in rows if r["label_pixels"] == 0]
    return {
        "n": len(rows),
        "dice": float(np.mean([r["dice"] for r in rows])),
        "lesion_n": len(lesion),
        "lesion_dice": float(np.mean([r["dice"] for r in lesion])) if lesion else None,
        "sensitivity": float(np.mean([r["overlap_pixels"] > 0 for r in lesion])) if lesion else None,
        "lesion_free_n": len(free),
        "specificity": float(np.mean([r["pred_pixels"] == 0 for r in free])) if free else None,
    }


def choose_fraction(validation: list[dict]) -> float:
    """The share with the best mean validation Dice over all images (ties: the smaller share)."""
    return max(FRACTION_GRID, key=lambda t: (round(metrics(with_rule(validation, t))["dice"], 6), -t))


def paired(base: list[dict], other: list[dict], key: str = "dice", resamples: int = 2000, seed: int = 0) -> dict:
    """`other` minus `base` per image (same images): mean, 95% bootstrap interval, images better / worse."""
    a, b = ({r["image"]: r[key] for r in rows} for rows in (base, other))
    if a.keys() != b.keys():
        raise ValueError("the two evaluations do not score the same images")
    diff = np.array([float(b[k]) - float(a[k]) for k in sorted(a)])
    boot = diff[np.random.default_rng(seed).integers(0, len(diff), (resamples, len(diff)))].mean(1)
    return {
        "mean": float(diff.mean()),
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "better": int((diff > 1e-9).sum()),
        "worse": int((diff < -1e-9).sum()),
        "n": len(diff),
    }


def table(results: dict, baseline: str) -> list[str]:
    """Markdown: one row per model and TTA setting and set; paired Dice against the baseline's plain row."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = []
    for name, entry in results["sets"].items():
        lines += [
            f"### {name}",
            "",
            "| model | flip TTA | no-lesion share | Dice (all) | lesion Dice | sensitivity | "
            f"specificity | Dice vs {baseline} (95% CI, better/worse) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in entry:
            d = row["vs_baseline"]
            lines.append(
                f"| {row['model']} | {'on' if row['flip_tta'] else 'off'} | {row['min_lesion_fraction']:g} | "
                f"{fmt(row['dice'])} | {fmt(row['lesion_dice'])} | {fmt(row['sensitivity'])} | "
                f"{fmt(row['specificity'])} ({row['lesion_free_n']}) | {d['mean']:+.3f} "
                f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] {d['better']}/{d['worse']} |"
            )
        lines.append("")
    return lines


def operating_points(rows: dict, name: str, tta: bool) -> list[str]:
    """Markdown: for every share of the grid, what `min_lesion_fraction` at that share gives on each set (`name`,
    flip TTA `tta`): the trade between lesion-free images left empty and lesions found that a user chooses from."""
    lines = [
        f"### Operating points of {name}, flip TTA {'on' if tta else 'off'}",
        "",
        "| min_lesion_fraction | " + " | ".join(f"{s}: left empty, found, Dice (all)" for s in SETS) + " |",
        "|---|" + "---|" * len(SETS),
    ]
    for t in FRACTION_GRID:
        cells = []
        for s in SETS:
            m = metrics(with_rule(rows[(name, tta, s)], t))
            free = m["lesion_free_n"]
            empty = f"{round(m['specificity'] * free)}/{free}" if free else "-"
            cells.append(f"{empty}, {round(m['sensitivity'] * m['lesion_n'])}/{m['lesion_n']}, {m['dice']:.3f}")
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", type=Path, required=True, help="`mgcc prepare --include-normal` output")
    parser.add_argument("--stu", type=Path, required=True, help="STU-Hospital prepared (all sections are scored)")
    parser.add_argument(
        "--model", action="append", required=True, metavar="NAME=MODELS_DIR", help="a folder with the model's model.pt"
    )
    parser.add_argument("--baseline", required=True, help="the NAME the paired differences are taken against")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "release-2.0" / "evaluation")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "release-2.0")
    parser.add_argument(
        "--operating-points", metavar="NAME", help="also tabulate every no-lesion share of the grid for NAME"
    )
    opts = parser.parse_args()
    opts.work = opts.work.resolve()  # the evaluations run in the bundle folder
    models = {name: Path(folder).resolve() for name, folder in (m.split("=", 1) for m in opts.model)}
    data = {"busi": opts.busi.resolve(), "stu": opts.stu.resolve()}
    rows = {
        (name, tta, s): read_rows(
            evaluate(folder, data[SETS[s][0]], SETS[s][1], tta, opts.work / name / f"{s}-tta-{'on' if tta else 'off'}")
        )
        for name, folder in models.items()
        for tta in (False, True)
        for s in SETS
    }
    chosen = {
        (name, tta): choose_fraction(rows[(name, tta, "busi_validation")]) for name in models for tta in (False, True)
    }
    results = {
        "models": {n: str(f.relative_to(REPO)) for n, f in models.items()},
        "baseline": opts.baseline,
        "fraction_grid": FRACTION_GRID,
        "sets": {},
    }
    for s in SETS:
        base = with_rule(rows[(opts.baseline, False, s)], chosen[(opts.baseline, False)])
        results["sets"][s] = [
            {
                "model": name,
                "flip_tta": tta,
                "min_lesion_fraction": chosen[(name, tta)],
                **metrics(ruled),
                "vs_baseline": paired(base, ruled),
            }
            for name in models
            for tta in (False, True)
            for ruled in [with_rule(rows[(name, tta, s)], chosen[(name, tta)])]
        ]
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{opts.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "The no-lesion share is chosen on BUSI validation per model and TTA setting (best mean Dice over all "
        f"images); the paired column compares with {opts.baseline}, TTA off, its own share.",
        "",
        *table(results, opts.baseline),
    ]
    if opts.operating_points:
        lines += [line for tta in (False, True) for line in operating_points(rows, opts.operating_points, tta)]
    Path(f"{opts.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
