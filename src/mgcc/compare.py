"""`mgcc compare`: supervised-only, the auxiliary decoders alone, and MGCC with real, synthetic or both kinds of
unlabeled images, over one or more seeds.

All variants of a seed share its data split, generator and training budget; only the decoders trained and the
unlabeled set (or its absence) change. A seed sets the split, the generator's sampling and the segmentation
training; each seed's generator sees only that split's train images. The preset's own seed runs in `OUT`
itself (so it shares the generator of a `mgcc run` there), any other seed in `OUT/seed-<n>/`. Every stage resumes,
so a comparison can span several sittings. The result is one table, `<out>/compare/compare.md` (+ `compare.json`).
"""

from __future__ import annotations

import copy
import csv
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from mgcc.errors import UsageError
from mgcc.figures import plot_comparison
from mgcc.jobs import Job, run_jobs
from mgcc.pipeline import GENERATOR_STAGES, evaluate_stage, make_run, segmentation_stage
from mgcc.presets import load_preset
from mgcc.report import METRICS, metrics_table
from mgcc.stages import Run, Stage, execute_stages, read_record
from mgcc.variants import VARIANTS, adopt_legacy_folders, evaluation_folder, run_variant, training_folder

ABLATION = "mgcc-labeled"  # the auxiliary decoders without unlabeled images


def seeded_preset(preset: dict[str, Any], seed: int) -> dict[str, Any]:
    """The preset with every seed set to `seed`: the split, the generator's sampling, the segmentation training."""
    spec = copy.deepcopy(preset)
    spec["data"]["seed"] = seed
    spec["ldm"].setdefault("sample", {})["seed"] = seed
    spec["segmentation"].setdefault("common", {})["seed"] = seed
    return spec


def parse_variants(variants: str | tuple | list) -> list[str]:
    """`--variants supervised,mgcc-real` (or a list of names), every name checked against VARIANTS."""
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise UsageError(f"--variants: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return names


def parse_seeds(seeds: int | str | tuple | list | None, default: int) -> list[int]:
    """`--seeds 0,1,2` (or a list), `--seeds 3` or nothing (the preset's seed)."""
    if seeds is None:
        return [default]
    items = seeds if isinstance(seeds, (tuple, list)) else str(seeds).split(",")
    try:
        parsed = [int(str(item).strip()) for item in items]
    except ValueError:
        raise UsageError(f"--seeds {seeds}: expected whole numbers separated by commas, e.g. 0,1,2") from None
    if len(set(parsed)) != len(parsed) or any(s < 0 for s in parsed):
        raise UsageError(f"--seeds {seeds}: seeds must be distinct and not negative")
    return parsed


def read_scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {row["image"]: float(row["dice"]) for row in csv.DictReader(f)}


def paired_dice_differences(
    per_image: dict[str, list[Path]], baseline: str, resamples: int = 2000, seed: int = 0
) -> dict:
    """Each variant's per-image Dice minus the baseline's on the same test images, pooled over seeds (one
    `per_image.csv` per seed, in the same seed order for every variant): mean, 95% bootstrap interval (images are
    resampled within each seed, so every resample keeps each seed's test set size), and how many images got
    better / worse. A difference whose interval spans 0 is not resolved by these test sets."""
    scores = {name: [read_scores(path) for path in paths] for name, paths in per_image.items()}
    rng = np.random.default_rng(seed)
    result = {}
    for name, per_seed in scores.items():
        if name == baseline:
            continue
        diffs = []
        for i, (values, base) in enumerate(zip(per_seed, scores[baseline], strict=True)):
            if values.keys() != base.keys():
                raise ValueError(f"{per_image[name][i]} and {per_image[baseline][i]} do not score the same test images")
            diffs.append(np.array([values[k] - base[k] for k in sorted(base)]))
        pooled = np.concatenate(diffs)
        sums = sum(d[rng.integers(0, len(d), (resamples, len(d)))].sum(1) for d in diffs)
        low, high = np.percentile(sums / len(pooled), [2.5, 97.5])
        result[name] = {
            "mean": float(pooled.mean()),
            "ci95": [float(low), float(high)],
            "n": len(pooled),
            "better": int((pooled > 0).sum()),
            "worse": int((pooled < 0).sum()),
        }
    return result


def differences_table(differences: dict, baseline: str) -> str:
    lines = [f"| model | Dice minus {baseline} (mean, 95% bootstrap CI) | images better / worse |", "|---|---|---|"]
    for name, d in differences.items():
        lines.append(
            f"| {name} | {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | "
            f"{d['better']} / {d['worse']} of {d['n']} |"
        )
    return "\n".join(lines)


def over_seeds(per_seed: dict[int, dict[str, dict]], seconds: dict[int, dict[str, float]]) -> dict[str, dict]:
    """Per variant: mean and std over seeds of each seed's mean test metric, and the mean training wall time."""
    names = next(iter(per_seed.values()))
    summary = {}
    for name in names:
        row: dict[str, Any] = {}
        for metric in METRICS:
            values = np.array([per_seed[s][name][metric]["mean"] for s in per_seed])
            row[metric] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "per_seed": values.tolist(),
            }
        row["training_seconds"] = float(np.mean([seconds[s][name] for s in seconds]))
        summary[name] = row
    return summary


def seeds_table(summary: dict[str, dict], seeds: list[int]) -> str:
    """Mean ± std over seeds (sample std; one seed: the mean alone)."""

    def cell(value: dict) -> str:
        return f"{value['mean']:.4f}" + (f" ± {value['std']:.4f}" if value["std"] is not None else "")

    lines = [
        "| model | Dice | IoU | HD95 (px) | per-seed Dice | training wall time (s, mean) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        per_seed = ", ".join(f"{v:.3f}" for v in row["dice"]["per_seed"])
        lines.append(
            f"| {name} | " + " | ".join(cell(row[m]) for m in METRICS) + f" | {per_seed} | "
            f"{row['training_seconds']:.0f} |"
        )
    return (
        "\n".join(lines) + f"\n\nSeeds: {', '.join(map(str, seeds))}; std is the sample standard deviation over seeds."
    )


def seed_run(base: Run, seed: int) -> Run:
    """The run of one seed: the base run itself when the seed changes nothing, else `<out>/seed-<seed>`."""
    spec = seeded_preset(base.preset, seed)
    out = base.out if spec == base.preset else base.out / f"seed-{seed}"
    return Run(spec, out, base.data, base.data_options)


def compare(
    preset: str = "busi-cpu",
    data: str | None = None,
    out: str | None = None,
    variants: str | list[str] = tuple(VARIANTS),
    seeds: str | None = None,
    jobs: int = 1,
    **data_options: Any,
) -> None:
    """Train and evaluate each variant at the same labeled fraction and budget, for each seed, then tabulate.

    Args:
        preset: preset name or path (see `mgcc run`).
        data: the dataset in any form `mgcc run` takes; default: the preset's built-in phantom data.
        out: output folder; default `outputs/<preset>`.
        variants: comma-separated subset of `mgcc.variants.VARIANTS` (`mgcc-synthetic-pairs`: a mask-conditioned
            generator's samples as labeled pairs); the first is the baseline of the paired differences.
        seeds: comma-separated seeds (e.g. 0,1,2); default: the preset's seed.
        jobs: how many chains of stages run at once (`job_groups`), each a process with its share of the CPU threads
            and its output in `<out>/compare/jobs/seed-<seed>-<chain>.log`, once each seed's data is prepared;
            default 1: every stage one after another, in this process.
        data_options: `mgcc prepare`'s options for a generic-layout dataset (see `mgcc run`).
    """
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be 1 or more")
    names = parse_variants(variants)
    base = make_run(load_preset(preset), data, out, data_options)
    chosen_seeds = parse_seeds(seeds, base.preset["data"]["seed"])
    stages = plan(base, names)
    runs = {seed: seed_run(base, seed) for seed in chosen_seeds}
    for seed, run in runs.items():
        print(f"[mgcc] seed {seed} -> {run.out}", flush=True)
        adopt_legacy_folders(run.out, run_variant(base.preset))
        execute_stages(run, stages if jobs == 1 else [s for s in stages if s.name == "prepare"])
    if jobs > 1:
        chains = job_groups(base, stages, names)
        work = [Job(f"seed-{seed}-{c}", run, tuple(chains[c])) for seed, run in runs.items() for c in chains]
        run_jobs(work, functools.partial(plan, base, names), jobs, base.folder("compare") / "jobs")
    tabulate(base, runs, names)


def plan(base: Run, names: list[str]) -> list[Stage]:
    """The stages every seed runs in order: prepare, the generator's stages when a variant reads its samples, then
    each variant's training and evaluation (in `segmentation-<variant>/`, `evaluate-<variant>/`). The variant that
    `mgcc run` trains with the preset runs with the preset's settings alone, as there, so a comparison next to a run
    does not train that model twice."""
    variant_stages = []
    for name in names:
        files, overrides = VARIANTS[name]
        variant_stages += [
            segmentation_stage(name, files, {} if name == run_variant(base.preset) else overrides),
            evaluate_stage(name),
        ]
    needs_samples = any("sample" in stage.reads_from(base) for stage in variant_stages)
    return [s for s in GENERATOR_STAGES if needs_samples or s.name == "prepare"] + variant_stages


def job_groups(base: Run, stages: list[Stage], names: list[str]) -> dict[str, list[str]]:
    """The stages after prepare as chains that may run at the same time (`--jobs`): the generator's stages with the
    variants that read its samples after them (`generator`), and each other variant on its own (its training, then
    its evaluation)."""
    chains = {name: [training_folder(name), evaluation_folder(name)] for name in names}
    in_chains = {stage for chain in chains.values() for stage in chain}
    generator = [s.name for s in stages if s.name not in in_chains and s.name != "prepare"]
    by_name = {s.name: s for s in stages}
    groups = {"generator": generator} if generator else {}
    for name, chain in chains.items():
        if "sample" in by_name[chain[0]].reads_from(base):
            groups["generator"] += chain
        else:
            groups[name] = chain
    return groups


def tabulate(base: Run, runs: dict[int, Run], names: list[str]) -> None:
    """`<out>/compare/compare.md`, `compare.json` and `compare.png` from the finished evaluations of every seed."""
    per_seed = {
        seed: {
            name: json.loads((run.folder(evaluation_folder(name)) / "evaluation" / "summary.json").read_text())
            for name in names
        }
        for seed, run in runs.items()
    }
    seconds = {
        seed: {name: read_record(run.out, training_folder(name))["seconds"] for name in names}
        for seed, run in runs.items()
    }
    summary = over_seeds(per_seed, seconds)
    seeds = list(runs)
    report: dict[str, Any] = {
        "preset": base.preset["name"],
        "seeds": seeds,
        "variants": names,
        "summary": summary,
        "per_seed": {
            str(seed): {"folder": str(run.out), "results": per_seed[seed], "training_seconds": seconds[seed]}
            for seed, run in runs.items()
        },
    }
    md = [
        f"# MGCC comparison — preset `{base.preset['name']}`",
        "",
        "## Test metrics over seeds",
        "",
        seeds_table(summary, seeds),
        "",
        "Each variant's model and test results are in `segmentation-<variant>/` and "
        "`evaluate-<variant>/` of each seed's run.",
        "",
    ]
    if len(names) > 1:
        per_image = {
            name: [run.folder(evaluation_folder(name)) / "evaluation" / "per_image.csv" for run in runs.values()]
            for name in names
        }
        report["paired_dice_differences"] = paired_dice_differences(per_image, names[0])
        md += [
            "## Paired per test image, pooled over seeds (bootstrap within seeds)",
            "",
            differences_table(report["paired_dice_differences"], names[0]),
            "",
        ]
        if ABLATION in names[1:] and len(names) > 2:  # what the unlabeled images add to the auxiliary decoders
            above = {name: paths for name, paths in per_image.items() if name != names[0]}
            report["paired_dice_differences_to_ablation"] = paired_dice_differences(above, ABLATION)
            md += [
                f"## Against `{ABLATION}`: what the unlabeled images add to the auxiliary decoders",
                "",
                differences_table(report["paired_dice_differences_to_ablation"], ABLATION),
                "",
            ]
    for seed, run in runs.items():
        md += [f"## Seed {seed} (`{run.out}`): per image, mean ± std", "", metrics_table(per_seed[seed]), ""]
    folder = base.folder("compare")
    folder.mkdir(exist_ok=True)
    (folder / "compare.json").write_text(json.dumps(report, indent=2))
    plot_comparison(summary, seeds, report.get("paired_dice_differences"), names[0], folder / "compare.png")
    (folder / "compare.md").write_text("\n".join(md + ["![comparison](compare.png)", ""]))
    print("\n".join(md))
    print(f"[mgcc] comparison: {folder / 'compare.md'}")
