"""One-off (2026-11-27): paired differences between two lever runs of diffusion_levers_lever.py (same seeds and
masks, same judges):
lesion contrast, one clear lesion and mask Dice per judge; B - A with a bootstrap 95% interval over the samples.

    python scripts/experiments/diffusion_levers_paired.py outputs/dv-base outputs/dv-vpred > <out>.json
"""

import json
import sys
from pathlib import Path

import numpy as np


def interval(diff: np.ndarray, rng: np.random.Generator) -> list[float]:
    boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(10_000)]
    return [float(v) for v in np.percentile(boot, [2.5, 97.5])]


a, b = (json.loads((Path(p) / "levers.json").read_text()) for p in sys.argv[1:3])
if a["files"] != b["files"]:
    raise SystemExit("the two runs did not generate the same samples")
rng = np.random.default_rng(0)
values = {"lesion contrast": (a["contrast"], b["contrast"])}
for judge in a["judges"]:
    values[f"{judge}: one clear lesion"] = (a["judges"][judge]["clear"], b["judges"][judge]["clear"])
    values[f"{judge}: mask Dice"] = (a["judges"][judge]["dice"], b["judges"][judge]["dice"])
result = {"A": sys.argv[1], "B": sys.argv[2], "n": len(a["files"])}
for key, (x, y) in values.items():
    x, y = np.asarray(x, float), np.asarray(y, float)
    result[key] = {
        "A": float(x.mean()),
        "B": float(y.mean()),
        "B - A": float((y - x).mean()),
        "ci95": interval(y - x, rng),
    }
print(json.dumps(result, indent=1))
