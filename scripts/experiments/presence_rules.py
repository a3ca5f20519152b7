"""Which "lesion or not" rule separates lesion-free images best? Per image, the model's lesion probabilities (flip TTA
as asked) give four presence scores: the predicted area (the bundle's `min_lesion_fraction` rule), the highest
probability, the mean probability inside the predicted lesion (its confidence) and the lesion mass (sum of
probabilities). Each rule "a lesion if the score >= t" empties the mask below t; t is chosen on BUSI validation by
the best mean Dice over all images (ties: the smaller t) and then read on BUSI test and STU-Hospital, paired per image
against the area rule.

    python scripts/experiments/presence_rules.py outputs/release-2.0/mgcc-lesion-aware-6000/models \
        --busi outputs/release-2.0-levers/busi --stu outputs/release-2.0-levers/stu --flip-tta \
        --out docs/results/presence-rules-mgcc-la
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release_evaluation import SETS, metrics, network_and_dataset, paired  # noqa: E402

RULES = ("area", "max_probability", "confidence", "mass")


def scores(models: Path, data: Path, sections: list[str], flip_tta: bool) -> list[dict]:
    """Per image: the Dice counts of the 0.5 mask and the four presence scores (at the network's input size)."""
    network, dataset = network_and_dataset(models, data, sections, flip_tta)
    rows = []
    with torch.no_grad():
        for item in dataset:
            prob = torch.sigmoid(network(item["image"][None].float()))[0, 0]
            truth, mask = item["label"][0] > 0, prob >= 0.5
            pixels = int(mask.sum())
            rows.append(
                {
                    "image": Path(item["image"].meta["filename_or_obj"]).name,
                    "label_pixels": int(truth.sum()),
                    "pred_pixels": pixels,
                    "overlap_pixels": int((mask & truth).sum()),
                    "area": pixels / mask.numel(),
                    "max_probability": float(prob.max()),
                    "confidence": float(prob[mask].mean()) if pixels else 0.0,
                    "mass": float(prob.sum()) / prob.numel(),
                }
            )
    return rows


def with_rule(rows: list[dict], rule: str, threshold: float) -> list[dict]:
    """The rows with Dice, where a score under `threshold` empties the prediction."""
    out = []
    for r in rows:
        empty = r[rule] < threshold or r["pred_pixels"] == 0
        pred, overlap = (0, 0) if empty else (r["pred_pixels"], r["overlap_pixels"])
        total = pred + r["label_pixels"]
        dice = 1.0 if total == 0 else 2 * overlap / total
        out.append({**r, "pred_pixels": pred, "overlap_pixels": overlap, "dice": dice})
    return out


def choose(validation: list[dict], rule: str) -> float:
    """The threshold with the best mean validation Dice (candidates: 0 and every image's score; ties: the smaller)."""
    grid = sorted({0.0, *(r[rule] for r in validation)})
    return max(grid, key=lambda t: (round(metrics(with_rule(validation, rule, t))["dice"], 6), -t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, help="a folder with the model's model.pt")
    parser.add_argument("--busi", type=Path, required=True, help="`mgcc prepare --include-normal` output")
    parser.add_argument("--stu", type=Path, required=True, help="STU-Hospital prepared (all sections are scored)")
    parser.add_argument("--flip-tta", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    opts = parser.parse_args()
    data = {"busi": opts.busi.resolve(), "stu": opts.stu.resolve()}
    rows = {s: scores(opts.models.resolve(), data[d], sections, opts.flip_tta) for s, (d, sections) in SETS.items()}
    chosen = {rule: choose(rows["busi_validation"], rule) for rule in RULES}
    results = {"models": str(opts.models), "flip_tta": opts.flip_tta, "thresholds": chosen, "sets": {}}
    lines = [
        f"Presence rules of `{opts.models}` (flip TTA {'on' if opts.flip_tta else 'off'}), thresholds chosen on BUSI "
        "validation; paired Dice against the area rule.",
        "",
        "| set | rule (threshold) | Dice (all) | lesion Dice | lesions found | lesion-free left empty | vs area rule |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, set_rows in rows.items():
        base = with_rule(set_rows, "area", chosen["area"])
        results["sets"][s] = {}
        for rule in RULES:
            ruled = with_rule(set_rows, rule, chosen[rule])
            m, d = metrics(ruled), paired(base, ruled)
            results["sets"][s][rule] = {**m, "vs_area": d}
            found = f"{round(m['sensitivity'] * m['lesion_n'])} of {m['lesion_n']}"
            free = m["lesion_free_n"]
            empty = f"{round(m['specificity'] * free)} of {free}" if free else ""
            lines.append(
                f"| {s} | {rule} ({chosen[rule]:.4g}) | {m['dice']:.3f} | {m['lesion_dice']:.3f} | {found} | {empty} | "
                f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] |"
            )
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{opts.out}.json").write_text(json.dumps({**results, "rows": rows}, indent=1) + "\n")
    Path(f"{opts.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
