"""Does bfloat16 training (`amp` auto) change the generator? The float32 twin of a diffusion run against the same run
in bfloat16 and against a second bfloat16 seed (the run-to-run spread), same epochs, same sampling seeds.

    python scripts/experiments/ldm128/amp_check.py --epochs 50 \
        --run "bfloat16, seed 0=<run>/out/diffusion_history.csv,<eval>/quality.json" \
        --run "bfloat16, seed 1=..." --run "float32, seed 0=..." --reference "bfloat16, seed 0" \
        --out docs/results/generator-ldm128/amp_check.png

Each run gives its training history (`diffusion_history.csv`, a loss per iteration) and the `quality.json` that the
generator bundle's `evaluate.json` wrote for its samples at `--epochs`. Writes the figure (loss by epoch, KID per run)
and, beside it, the numbers as JSON and a markdown table: KID x 1000 and FID per run and each run's difference from
the reference.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def epoch_losses(history: Path, epochs: int) -> list[float]:
    """The mean training loss of each of the first `epochs` epochs (the last record of an iteration wins: a resumed
    run may repeat one)."""
    by_iteration: dict[int, tuple[int, float]] = {}
    with history.open() as f:
        for row in csv.DictReader(f):
            by_iteration[int(row["iteration"])] = (int(row["epoch"]), float(row["loss"]))
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for epoch, loss in by_iteration.values():
        per_epoch[epoch].append(loss)
    missing = [e for e in range(1, epochs + 1) if e not in per_epoch]
    if missing:
        raise SystemExit(f"{history}: no iterations recorded for epochs {missing[:5]}")
    return [sum(per_epoch[e]) / len(per_epoch[e]) for e in range(1, epochs + 1)]


def scores(quality: Path) -> dict:
    """KID x 1000 (mean, std over subsets), FID and the number of samples of one `quality.json`."""
    q = json.loads(quality.read_text())
    kid = q["kid"]["generated_vs_train"]
    return {
        "kid_x1000": 1000 * kid["mean"],
        "kid_std_x1000": 1000 * kid["std"],
        "fid": q["fid"]["generated_vs_train"],
        "samples": q["num_samples"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=diffusion_history.csv,quality.json")
    parser.add_argument("--reference", required=True, help="the NAME differences are taken from")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = {}
    for item in args.run:
        name, paths = item.split("=", 1)
        history, quality = (Path(p) for p in paths.split(","))
        runs[name] = {"epoch_loss": epoch_losses(history, args.epochs), **scores(quality)}
    if args.reference not in runs:
        raise SystemExit(f"--reference {args.reference!r}: not one of the runs {list(runs)}")
    ref = runs[args.reference]
    for run in runs.values():
        run["kid_x1000_minus_reference"] = run["kid_x1000"] - ref["kid_x1000"]
        run["fid_minus_reference"] = run["fid"] - ref["fid"]
        run["last10_loss_minus_reference"] = sum(run["epoch_loss"][-10:]) / 10 - sum(ref["epoch_loss"][-10:]) / 10

    fig, (loss_ax, kid_ax) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    for name, run in runs.items():
        loss_ax.plot(range(1, args.epochs + 1), run["epoch_loss"], label=name)
    loss_ax.set_xlabel("epoch (57 iterations of batch 8)")
    loss_ax.set_ylabel("training loss, epoch mean")
    loss_ax.legend(fontsize=8)
    loss_ax.grid(alpha=0.3)
    names = list(runs)
    kid_ax.bar(names, [runs[n]["kid_x1000"] for n in names], yerr=[runs[n]["kid_std_x1000"] for n in names], capsize=4)
    kid_ax.set_ylabel(f"KID x 1000 at epoch {args.epochs} (vs train images)")
    kid_ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)

    summary = {"epochs": args.epochs, "reference": args.reference, "runs": runs}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"| run | samples | KID x 1000 (± std over subsets) | FID | KID vs {args.reference} | FID vs {args.reference} "
        "| loss, last 10 epochs, vs reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        lines.append(
            f"| {name} | {run['samples']} | {run['kid_x1000']:.1f} ± {run['kid_std_x1000']:.1f} | {run['fid']:.1f} "
            f"| {run['kid_x1000_minus_reference']:+.1f} | {run['fid_minus_reference']:+.1f} "
            f"| {run['last10_loss_minus_reference']:+.4f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
