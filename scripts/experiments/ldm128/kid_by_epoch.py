"""KID of a diffusion run's samples by training epoch, with the floor (real validation images) and the ceiling (the
autoencoder's reconstructions): is the run still improving?

    python scripts/experiments/ldm128/kid_by_epoch.py --quality 50=<eval>/quality.json 100=... \
        --out docs/results/generator-ldm128/kid_by_epoch.png

Each `quality.json` is what the generator bundle's `evaluate.json` writes for one epoch's samples. Writes the figure
and, beside it, the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def kid(quality: dict, key: str) -> tuple[float, float]:
    """KID x 1000 (mean, std over subsets) of one entry of a quality.json."""
    entry = quality["kid"][key]
    return 1000 * entry["mean"], 1000 * entry["std"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", nargs="+", required=True, help="EPOCH=quality.json, one per scored epoch")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for item in args.quality:
        epoch, path = item.split("=", 1)
        quality = json.loads(Path(path).read_text())
        rows.append(
            {"epoch": int(epoch), "samples": quality["num_samples"], "kid_x1000": kid(quality, "generated_vs_train")}
        )
    rows.sort(key=lambda r: r["epoch"])
    floor, ceiling = kid(quality, "validation_vs_train"), kid(quality, "reconstructed_validation_vs_train")

    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    epochs = [r["epoch"] for r in rows]
    ax.errorbar(
        epochs,
        [r["kid_x1000"][0] for r in rows],
        yerr=[r["kid_x1000"][1] for r in rows],
        marker="o",
        capsize=3,
        label="samples (DDIM 50 steps)",
    )
    ax.axhline(ceiling[0], color="tab:orange", linestyle="--", label=f"autoencoder reconstructions ({ceiling[0]:.0f})")
    ax.axhline(floor[0], color="tab:green", linestyle=":", label=f"real validation images ({floor[0]:.1f})")
    ax.set_xlabel("diffusion training epoch (57 iterations of batch 8)")
    ax.set_ylabel("KID x 1000 vs training images")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    summary = {"rows": rows, "floor_kid_x1000": floor, "ceiling_kid_x1000": ceiling}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
