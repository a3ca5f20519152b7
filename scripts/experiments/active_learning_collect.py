"""Collect a simulation's finished rounds from its `done.json` files, also where not every round finished, and
the class mix of each round's picks: `python scripts/experiments/active_learning_collect.py <out folder> <json>`."""

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def collect(out: Path) -> dict:
    first = load(out / "round-0" / "evaluation" / "done.json")
    start = json.loads((out / "round-0" / "datalist.json").read_text())
    pool = start["unlabeled"]
    report = {
        "round-0": {
            "labeled": len(start["training"]),
            "dice": first.get("dice"),
            "pool_benign_share": sum("benign" in e["image"] for e in pool) / len(pool),
        }
    }
    for strategy in sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "round-0"):
        rows, previous = [], {e["image"] for e in start["training"]}
        for folder in sorted((out / strategy).glob("round-*")):
            metrics = load(folder / "evaluation" / "done.json")
            if not metrics:
                break
            labeled = {e["image"] for e in json.loads((folder / "datalist.json").read_text())["training"]}
            picked = [Path(p).stem for p in labeled - previous]
            rows.append(
                {
                    "round": int(folder.name.split("-")[1]),
                    "labeled": len(labeled),
                    "dice": metrics["dice"],
                    "training_seconds": load(folder / "training" / "done.json").get("seconds"),
                    "picked_benign": sum(p.startswith("benign") for p in picked),
                    "picked_malignant": sum(p.startswith("malignant") for p in picked),
                }
            )
            previous = labeled
        report[strategy] = rows
    return report


if __name__ == "__main__":
    result = collect(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))
