"""`mgcc compare --jobs N`: chains of stages in processes of their own, with the CPU threads shared out."""

import os

import pytest

from mgcc.jobs import Job, run_jobs
from mgcc.stages import Run, Stage, StageError, read_record, run_python


def threads_stages(fail: str = "") -> list[Stage]:
    """Stages `a`, `b`, `c` that write the `OMP_NUM_THREADS` their process has (the stage named `fail` fails); built
    anew in each job's process, as `run_jobs` asks of its plan."""

    def stage(name: str) -> Stage:
        def execute(run: Run):
            if name == fail:
                raise StageError(f"stage '{name}' failed on purpose")
            print(f"stage {name} of {run.out.name} speaking")
            return run_python(name, run.out, lambda f: (f / "threads.txt").write_text(os.environ["OMP_NUM_THREADS"]))

        return Stage(name=name, outputs=["threads.txt"], execute=execute)

    return [stage(name) for name in ("a", "b", "c")]


def test_jobs_run_in_their_own_processes_with_a_share_of_the_threads_and_a_log_each(tmp_path, monkeypatch):
    monkeypatch.setattr("mgcc.jobs.os.cpu_count", lambda: 6)
    one, two = Run({}, tmp_path / "one"), Run({}, tmp_path / "two")
    run_jobs([Job("seed-0-x", one, ("a", "c")), Job("seed-0-y", two, ("b",))], threads_stages, 3, tmp_path / "logs")
    threads = {p.parent.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.glob("*/*/threads.txt")}
    assert threads == {"one/a": "2", "one/c": "2", "two/b": "2"}  # 6 cores, 3 jobs at a time
    assert read_record(one.out, "c")["name"] == "c"  # recorded as `execute_stages` records a stage
    assert "stage a of one speaking" in (tmp_path / "logs" / "seed-0-x.log").read_text()
    assert "stage b of two speaking" in (tmp_path / "logs" / "seed-0-y.log").read_text()


def test_a_failed_job_is_named_with_its_log_once_the_others_have_ended(tmp_path, monkeypatch):
    import functools

    monkeypatch.setattr("mgcc.jobs.os.cpu_count", lambda: 1)
    jobs = [Job("seed-0-x", Run({}, tmp_path / "one"), ("a",)), Job("seed-0-y", Run({}, tmp_path / "two"), ("b", "c"))]
    with pytest.raises(StageError, match=r"1 of 2 jobs failed: seed-0-y \(see .*seed-0-y.log\)"):
        run_jobs(jobs, functools.partial(threads_stages, fail="b"), 2, tmp_path / "logs")
    assert (tmp_path / "one" / "a" / "threads.txt").read_text() == "1"  # at least one thread each
    assert not (tmp_path / "two" / "c").exists()  # its chain stopped at the failure
    assert "failed on purpose" in (tmp_path / "logs" / "seed-0-y.log").read_text()
