"""`mgcc compare`: supervised-only vs MGCC with real, synthetic, or both kinds of unlabeled images.

All variants share the preset's data, generator and training budget; only the unlabeled set (or its absence)
changes. The result is one table, `<out>/compare/compare.md` (+ `compare.json`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mgcc.pipeline import DEFAULT_OUT, STAGES, Run, evaluate_stage, execute_stages, segmentation_stage
from mgcc.presets import load_preset
from mgcc.report import metrics_table

#: variant -> (bundle config files, overrides)
VARIANTS: dict[str, tuple[list[str], dict]] = {
    "supervised": (["train.json", "train_supervised.json"], {}),
    "mgcc-real": (["train.json"], {"unlabeled_source": "real"}),
    "mgcc-synthetic": (["train.json"], {"unlabeled_source": "synthetic"}),
    "mgcc-both": (["train.json"], {"unlabeled_source": "both"}),
}
GENERATOR_STAGES = ("prepare", "autoencoder", "diffusion", "sample", "quality")


def paired_dice_differences(per_image: dict[str, Path], baseline: str, resamples: int = 2000, seed: int = 0) -> dict:
    """Each variant's per-image Dice minus the baseline's on the same test images: mean, 95% bootstrap interval,
    and how many images got better / worse. A difference whose interval spans 0 is not resolved by this test set."""
    scores = {}
    for name, path in per_image.items():
        with open(path, newline="") as f:
            scores[name] = {row["image"]: float(row["dice"]) for row in csv.DictReader(f)}
    base = scores[baseline]
    rng = np.random.default_rng(seed)
    result = {}
    for name, values in scores.items():
        if name == baseline:
            continue
        if values.keys() != base.keys():
            raise ValueError(f"{per_image[name]} and {per_image[baseline]} do not score the same test images")
        diff = np.array([values[k] - base[k] for k in sorted(base)])
        means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(1)
        low, high = np.percentile(means, [2.5, 97.5])
        result[name] = {"mean": float(diff.mean()), "ci95": [float(low), float(high)], "n": len(diff),
                        "better": int((diff > 0).sum()), "worse": int((diff < 0).sum())}
    return result


def differences_table(differences: dict, baseline: str) -> str:
    lines = [f"| model | Dice minus {baseline} (mean, 95% bootstrap CI) | images better / worse |", "|---|---|---|"]
    for name, d in differences.items():
        lines.append(f"| {name} | {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | "
                     f"{d['better']} / {d['worse']} of {d['n']} |")
    return "\n".join(lines)


def compare(preset: str = "busi-cpu", data: str | None = None, out: str | None = None,
            variants: str | list[str] = tuple(VARIANTS)) -> None:
    """Train and evaluate each variant at the same labeled fraction and budget, then tabulate test metrics.

    Args:
        preset: preset name or path (see `mgcc run`).
        data: raw dataset folder; default: the preset's built-in phantom data.
        out: output folder; default `outputs/<preset>`.
        variants: comma-separated subset of supervised, mgcc-real, mgcc-synthetic, mgcc-both.
    """
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    spec = load_preset(preset)
    run = Run(spec, (Path(out) if out else DEFAULT_OUT / spec["name"]).resolve(),
               Path(data).resolve() if data else None)
    run.out.mkdir(parents=True, exist_ok=True)

    needs_samples = any(VARIANTS[n][1].get("unlabeled_source") in ("synthetic", "both") for n in names)
    stages = [s for s in STAGES if s.name in GENERATOR_STAGES and (needs_samples or s.name == "prepare")]
    for name in names:
        files, overrides = VARIANTS[name]
        stages += [segmentation_stage(name, files, overrides), evaluate_stage(name)]
    execute_stages(run, stages)

    rows = {name: json.loads((run.folder(f"evaluate-{name}") / "evaluation" / "summary.json").read_text())
            for name in names}
    table = metrics_table(rows)
    report = {"preset": spec["name"], "results": rows}
    if len(names) > 1:
        per_image = {name: run.folder(f"evaluate-{name}") / "evaluation" / "per_image.csv" for name in names}
        report["paired_dice_differences"] = paired_dice_differences(per_image, names[0])
        table += "\n\nPaired per test image:\n\n" + differences_table(report["paired_dice_differences"], names[0])
    folder = run.folder("compare")
    folder.mkdir(exist_ok=True)
    (folder / "compare.json").write_text(json.dumps(report, indent=2))
    (folder / "compare.md").write_text(f"# MGCC comparison — preset `{spec['name']}`\n\n{table}\n")
    print(table)
    print(f"[mgcc] comparison: {folder / 'compare.md'}")
