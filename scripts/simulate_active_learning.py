#!/usr/bin/env python
"""Does labeling by decoder disagreement beat labeling at random? The annotation loop, simulated on a prepared run.

Starting from a run's split (its labeled images; its unlabeled real images form the pool, their masks stand in
for the annotator), each round adds `--per-round` pool images to the labeled set and trains MGCC (real unlabeled
images: the rest of the pool) from scratch with the preset's budget, then scores the test split:

- `disagreement`: the images the previous round's model is least sure about (the bundle's `configs/score.json`:
  auxiliary decoders against the main one, as the MONAI Label strategy `mgcc_disagreement` ranks them);
- `random-<k>`: a random draw (seed k), `--random-draws` of them.

Round 0 (the run's labeled images only) is one model shared by every strategy. Each training and evaluation is a
resumable step (a stopped simulation continues where it was, inside a training from its last checkpoint).
Writes `<out>/active_learning.json`, `active_learning.md` (Dice vs labeled images, time per round) and
`active_learning.png` (the curve, one line per strategy):

    python scripts/simulate_active_learning.py --run outputs/busi-cpu --preset busi-cpu \\
        [--rounds 2] [--per-round 16] [--random-draws 3] [--out outputs/busi-cpu/active-learning] [--jobs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mgcc import SEG_BUNDLE
from mgcc.figures import plt
from mgcc.pipeline import EVALUATE_CONFIGS
from mgcc.presets import load_preset
from mgcc.stages import Run, run_bundle

DONE = "done.json"


def absolute(entries: list[dict], root: Path) -> list[dict]:
    """Datalist entries with the image and label paths made absolute (relative ones are relative to `root`)."""
    return [{k: str(root / v) if k in ("image", "label") else v for k, v in e.items()} for e in entries]


def oracle_label(entry: dict, root: Path) -> dict:
    """A pool image with its mask, as the annotator would return it: the prepared dataset's `labels/<name>`."""
    label = root / "labels" / Path(entry["image"]).name
    if not label.is_file():
        raise SystemExit(
            f"{label}: no mask for pool image {entry['image']}; the simulation needs masks for every "
            "unlabeled image of the split (BUSI has them)"
        )
    return {**entry, "label": str(label)}


def write_datalist(folder: Path, base: dict, labeled: list[dict], pool: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    datalist = {"training": labeled, "unlabeled": pool, "validation": base["validation"], "test": base["test"]}
    (folder / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return folder


def step(folder: Path, work) -> dict:
    """Run `work()` once: its result is kept in `<folder>/done.json`, so a rerun skips it."""
    done = folder / DONE
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    result = {**work(), "seconds": round(time.perf_counter() - start, 1)}
    done.write_text(json.dumps(result, indent=2))
    return result


def shared_settings(run: Run, folder: Path) -> dict[str, Any]:
    """The preset's segmentation settings, reading the round's `<folder>/datalist.json`."""
    return {**run.overrides("segmentation"), "dataset_dir": str(folder)}


def train_and_evaluate(run: Run, folder: Path) -> dict:
    """MGCC with real unlabeled images, the preset's budget, on `<folder>/datalist.json`; test-split metrics."""
    shared = shared_settings(run, folder)
    models = folder / "models"

    def train() -> dict:
        resume = any(models.glob("checkpoint_epoch=*.pt"))
        run_bundle(
            "training",
            folder,
            SEG_BUNDLE,
            ["train.json"],
            {
                **run.section("segmentation", "train"),
                "unlabeled_source": "real",
                "output_dir": str(folder),
                "ckpt_dir": str(models),
                "resume": resume,
            },
            shared=shared,
        )
        return {}

    def evaluate() -> dict:
        run_bundle(
            "evaluation",
            folder,
            SEG_BUNDLE,
            list(EVALUATE_CONFIGS),
            {
                **run.section("segmentation", "evaluate"),
                "output_dir": str(folder / "evaluation"),
                "ckpt_dir": str(models),
            },
            shared={**shared, **run.section("segmentation", "train")},
        )
        summary = json.loads((folder / "evaluation" / "evaluation" / "summary.json").read_text())
        return {metric: summary[metric]["mean"] for metric in ("dice", "iou", "hd95")}

    training = step(folder / "training", train)
    metrics = step(folder / "evaluation", evaluate)
    evaluation_seconds = metrics.pop("seconds")
    return {**metrics, "training_seconds": training["seconds"], "evaluation_seconds": evaluation_seconds}


def disagreement_scores(run: Run, folder: Path) -> dict[str, Any]:
    """The round's model scores its pool (the datalist's `unlabeled` section) with `configs/score.json`:
    `{"scores": {image: score}, "seconds": ...}`."""

    def score() -> dict:
        run_bundle(
            "scoring",
            folder,
            SEG_BUNDLE,
            ["inference.json", "score.json"],
            {
                "datalist": str(folder / "datalist.json"),
                "datalist_section": "unlabeled",
                "output_dir": str(folder / "scoring" / "out"),
                "ckpt_dir": str(folder / "models"),
            },
            shared=shared_settings(run, folder),
        )
        return json.loads((folder / "scoring" / "out" / "disagreement.json").read_text())

    return step(folder / "scoring", score)


def choose(strategy: str, pool: list[dict], scores: dict[str, float] | None, count: int, seed: int) -> list[dict]:
    """The `count` pool entries a strategy labels next: highest disagreement, or a seeded random draw."""
    if strategy == "disagreement":
        ranked = sorted(pool, key=lambda e: scores[Path(e["image"]).stem], reverse=True)
        return ranked[:count]
    picks = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[i] for i in sorted(picks)]


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A simulation resumes only with the settings it started with (`<out>/simulation.json`)."""
    path = out / "simulation.json"
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise SystemExit(f"{out} holds a simulation with other settings ({path}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))


def follow(strategy: str, run: Run, out: Path, base: dict, start: Path, rounds: int, per_round: int) -> list[dict]:
    """Rounds 1..`rounds` of one strategy from round 0's model: pick, label, retrain, score the test split."""
    root = run.dataset
    previous, labeled, pool = start, base["training"], base["unlabeled"]
    rows = []
    for r in range(1, rounds + 1):
        scoring = disagreement_scores(run, previous) if strategy == "disagreement" else {"seconds": 0.0}
        seed = 1000 * int(strategy.split("-")[1]) + r if strategy != "disagreement" else 0
        picked = choose(strategy, pool, scoring.get("scores"), per_round, seed)
        names = {e["image"] for e in picked}
        labeled = labeled + [oracle_label(e, root) for e in picked]
        pool = [e for e in pool if e["image"] not in names]
        folder = write_datalist(out / strategy / f"round-{r}", base, labeled, pool)
        print(f"[active learning] round {r}, {strategy}: {len(labeled)} labeled", flush=True)
        metrics = train_and_evaluate(run, folder)
        round_seconds = scoring["seconds"] + metrics["training_seconds"] + metrics["evaluation_seconds"]
        rows.append(
            {
                "round": r,
                "labeled": len(labeled),
                **metrics,
                "scoring_seconds": scoring["seconds"],
                "round_seconds": round(round_seconds, 1),
                "picked": sorted(Path(n).stem for n in names),
            }
        )
        previous = folder
    return rows


def simulate(run: Run, out: Path, rounds: int, per_round: int, random_draws: int, jobs: int = 1) -> dict[str, Any]:
    """Round 0, then every strategy's rounds; `jobs` strategies at a time (each training is its own process, so on
    a GPU they share it); unless OMP_NUM_THREADS is set, each of those gets cores // jobs threads."""
    check_settings(
        out,
        {
            "run": str(run.out),
            "preset": run.preset,
            "rounds": rounds,
            "per_round": per_round,
            "random_draws": random_draws,
        },
    )
    root = run.dataset
    base = json.loads((root / "datalist.json").read_text())
    base = {section: absolute(entries, root) for section, entries in base.items()}
    start = write_datalist(out / "round-0", base, base["training"], base["unlabeled"])
    if len(base["unlabeled"]) < rounds * per_round:
        raise SystemExit(f"{root}: {len(base['unlabeled'])} pool images, fewer than {rounds} x {per_round}")
    print(
        f"[active learning] round 0: {len(base['training'])} labeled, {len(base['unlabeled'])} in the pool", flush=True
    )
    first = train_and_evaluate(run, start)
    strategies = ["disagreement"] + [f"random-{k}" for k in range(random_draws)]
    # the trainings after round 0 run side by side: each gets its share of the cores
    share = (
        {}
        if jobs == 1 or "OMP_NUM_THREADS" in os.environ
        else {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    )
    os.environ.update(share)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as executor:
            later = dict(
                zip(
                    strategies,
                    executor.map(lambda s: follow(s, run, out, base, start, rounds, per_round), strategies),
                    strict=True,
                )
            )
    finally:
        for name in share:
            del os.environ[name]
    results = {
        s: [
            {
                "round": 0,
                "labeled": len(base["training"]),
                **first,
                "round_seconds": first["training_seconds"] + first["evaluation_seconds"],
            }
        ]
        + later[s]
        for s in strategies
    }
    return {
        "run": str(run.out),
        "preset": run.preset["name"],
        "rounds": rounds,
        "per_round": per_round,
        "strategies": results,
    }


def tabulate(report: dict[str, Any]) -> str:
    strategies = report["strategies"]
    random_names = [s for s in strategies if s.startswith("random")]
    lines = [
        "| round | labeled images | disagreement Dice | random Dice (mean ± std over draws) | random draws | "
        "time per round and strategy (s: scoring + training + test) |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(strategies["disagreement"]):
        draws = np.array([strategies[s][i]["dice"] for s in random_names])
        spread = f" ± {draws.std(ddof=1):.3f}" if len(draws) > 1 else ""
        seconds = np.mean([strategies[s][i]["round_seconds"] for s in strategies])
        lines.append(
            f"| {row['round']} | {row['labeled']} | {row['dice']:.3f} | {draws.mean():.3f}{spread} | "
            f"{', '.join(f'{d:.3f}' for d in draws)} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, rows in report["strategies"].items():
        x, y = [r["labeled"] for r in rows], [r["dice"] for r in rows]
        style = (
            dict(color="tab:red", lw=2, marker="o")
            if name == "disagreement"
            else dict(color="tab:gray", lw=1, marker=".", alpha=0.8)
        )
        ax.plot(x, y, label=name, **style)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("test Dice")
    ax.set_title(f"Active learning, preset {report['preset']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a pipeline run folder whose `prepare` stage is complete")
    parser.add_argument("--preset", required=True, help="the preset of that run (its training budget is used)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=16)
    parser.add_argument("--random-draws", type=int, default=3)
    parser.add_argument("--out", help="default: <run>/active-learning")
    parser.add_argument("--jobs", type=int, default=1, help="strategies trained at once after round 0 (on a GPU: all)")
    args = parser.parse_args(argv)
    run = Run(load_preset(args.preset), Path(args.run).resolve())
    if not (run.dataset / "datalist.json").is_file():
        parser.error(f"{run.dataset / 'datalist.json'} not found: run the `prepare` stage of {args.run} first")
    out = Path(args.out or run.out / "active-learning").resolve()
    report = simulate(run, out, args.rounds, args.per_round, args.random_draws, args.jobs)
    (out / "active_learning.json").write_text(json.dumps(report, indent=2))
    table = tabulate(report)
    (out / "active_learning.md").write_text(f"# Active learning, simulated (`{args.preset}`, {run.out})\n\n{table}\n")
    plot(report, out / "active_learning.png")
    print(table)
    print(f"[active learning] {out / 'active_learning.md'}, {out / 'active_learning.png'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
