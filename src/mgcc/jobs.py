"""Chains of stages that run at the same time, each in a process of its own (`mgcc compare --jobs N`).

A job is some stages of one run, which run in order; the jobs run `count` at a time, each in a fresh process whose
threads are the machine's CPU cores shared out among the `count` (`OMP_NUM_THREADS`, set before numpy or torch is
imported there and inherited by the bundle processes it starts), with its output in a log file of its own. Each job
process builds the stages anew by calling `plan`, which must be picklable (a module-level function, or a
`functools.partial` of one), and runs them with `execute_stages`: folders, fingerprints and resuming are those of
the same stages run one after another.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from mgcc.stages import Run, Stage, StageError, execute_stages


@dataclass(frozen=True)
class Job:
    name: str  # its log is `<logs>/<name>.log`
    run: Run
    stages: tuple[str, ...]  # the names of the stages it runs, in the order `plan` gives them


def threads_per_job(count: int) -> int:
    """The threads of each of `count` jobs that run at once: the CPU cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // count)


def run_jobs(jobs: list[Job], plan: Callable[[], list[Stage]], count: int, logs: Path) -> None:
    """Run every job, `count` at a time; when all have ended, a `StageError` names those that failed and their logs."""
    logs.mkdir(parents=True, exist_ok=True)
    threads = threads_per_job(count)
    print(f"[mgcc] {len(jobs)} jobs, {count} at a time, {threads} thread(s) each; their logs: {logs}", flush=True)
    failed = []
    with ProcessPoolExecutor(
        count,
        mp_context=multiprocessing.get_context("spawn"),  # a fresh process: no threads or torch state inherited
        initializer=_share_threads,
        initargs=(threads,),
        max_tasks_per_child=1,
    ) as pool:
        futures = {pool.submit(_run_job, job, plan, logs / f"{job.name}.log"): job for job in jobs}
        for future in as_completed(futures):
            job, error = futures[future], future.exception()
            print(f"[mgcc] job {job.name}: " + ("done" if error is None else f"failed: {error}"), flush=True)
            if error is not None:
                failed.append(f"{job.name} (see {logs / job.name}.log)")
    if failed:
        raise StageError(f"{len(failed)} of {len(jobs)} jobs failed: {', '.join(failed)}")


def _share_threads(threads: int) -> None:
    """A job process's first step, before its job (and numpy or torch) is loaded: its share of the threads."""
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _run_job(job: Job, plan: Callable[[], list[Stage]], log: Path) -> None:
    """In a job's own process: its output (and its bundle processes') to `log`, then its stages in order; the log
    ends with the traceback of what stopped it, if anything did."""
    with open(log, "ab") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    try:
        execute_stages(job.run, [stage for stage in plan() if stage.name in job.stages])
    except Exception:
        traceback.print_exc()
        raise
