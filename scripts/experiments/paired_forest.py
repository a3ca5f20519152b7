"""Paired Dice differences with their 95% intervals, one row per comparison and evaluation set: the figure of one or
more `release_evaluation.py` results.

    python scripts/experiments/paired_forest.py --result docs/results/generator-2.0-mgcc.json new real \
        --result docs/results/generator-2.0-mgcc-vs-real.json new --out docs/results/generator-2.0-mgcc.png

Each `--result JSON MODEL...` plots MODEL minus that file's baseline (flip TTA off, the rows users run by default).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(result: Path, models: list[str], sets: list[str]) -> list[tuple[str, str, dict]]:
    """(comparison, set, paired difference) for each model of `models` in the result file, flip TTA off."""
    data = json.loads(result.read_text())
    out = []
    for model in models:
        for s in sets:
            entry = [r for r in data["sets"][s] if r["model"] == model and not r["flip_tta"]]
            if not entry:
                raise SystemExit(f"{result}: no row for model {model!r} on {s}")
            out.append((f"{model} − {data['baseline']}", s, entry[0]["vs_baseline"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", nargs="+", action="append", required=True, metavar="JSON MODEL")
    parser.add_argument("--sets", nargs="+", default=["busi_test", "stu_hospital"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    entries = [row for json_file, *models in args.result for row in rows(Path(json_file), models, args.sets)]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(entries) + 1.2), dpi=120)
    colours = {s: f"C{i}" for i, s in enumerate(args.sets)}
    for y, (_, s, d) in enumerate(reversed(entries)):
        low, high = d["ci95"]
        ax.errorbar(d["mean"], y, xerr=[[d["mean"] - low], [high - d["mean"]]], fmt="o", capsize=3, color=colours[s])
    ax.set_yticks(range(len(entries)), [f"{label}, {s} (n={d['n']})" for label, s, d in reversed(entries)], fontsize=8)
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("Dice difference per image, mean and 95% bootstrap interval")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
