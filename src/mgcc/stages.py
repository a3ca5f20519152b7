"""Stages and their runner: each stage writes under `<out>/<stage>/` and leaves a `stage.json` record when complete.

`Stage` says what a stage runs with and what it leaves; `execute_stages` runs a list of them for a `Run`, skipping
each complete stage whose fingerprint (what it runs with) is unchanged, and writes each one's record: its
fingerprint and what it measured (`StageResult`: wall time, peak memory, and the precision a segmentation bundle
ran in). A bundle stage runs `python -m monai.bundle run` as its own process from the bundle folder, with the overrides
written to `<out>/<stage>/args.json` (readable, and re-runnable by hand). Running each bundle in its own process
keeps the two bundles' `scripts` packages apart and gives each stage its own peak-memory figure.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgcc.bundles import importable_as_scripts
from mgcc.errors import MgccError, UsageError

RECORD = "stage.json"
STARTED = "started.json"
#: where the segmentation bundle's configs build the `AutocastInferer` that runs every forward pass: training's
#: (evaluate.json evaluates with it), else inference's; the generator's configs have none
AUTOCAST_INFERERS = ("train#inferer", "inferer")
AUTOCAST_TARGET = "scripts.inferer.AutocastInferer"
#: what a stage's record says it measured, as the report's stage table shows it: (record key, heading, format)
MEASURED = (
    ("seconds", "wall time (s)", "{:.1f}"),
    ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"),
    ("precision", "precision", "{}"),
)


class StageError(MgccError, RuntimeError):
    """A stage failed; the message names the stage and its log file."""


@dataclass
class StageResult:
    name: str
    seconds: float
    peak_rss_mb: float
    command: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # the hashed parts of what the stage ran with
    precision: str | None = None  # what a segmentation bundle's forward passes ran in (`workflow_precision`)

    def to_json(self) -> dict[str, Any]:
        record = {
            "name": self.name,
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "command": self.command,
        }
        if self.precision:
            record["precision"] = self.precision
        if self.inputs:
            record["inputs"] = self.inputs
            record["fingerprint"] = fingerprint(self.inputs)
        return record


def fingerprint(value: Any) -> str:
    """A short hash of a JSON-able value: a part of what a stage runs with, or all parts (`StageResult.inputs`)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_dir(out: Path, name: str) -> Path:
    return Path(out) / name


def bundle_settings(bundle: Path, config_files: Sequence[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """The top-level settings a bundle workflow runs with: its config files merged in order, then `overrides` (what
    `monai.bundle run` does with `--config_file a.json b.json` and keyword overrides)."""
    settings: dict[str, Any] = {}
    for config in config_files:
        settings.update(json.loads((bundle / "configs" / config).read_text()))
    return {**settings, **overrides}


def make_output_folder(folder: Path, option: str = "--out") -> None:
    """Create `folder` and its parents; a file where a folder must be is refused by name (nothing written)."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == folder else f"{path} "
                raise UsageError(f"{option} {folder}: {where}is a file, not a folder; nothing was written")
            break
    folder.mkdir(parents=True, exist_ok=True)


#: what `read_started` gives for a `started.json` that cannot be read: settings unknown, so never resumed
UNREADABLE = {"fingerprint": "unreadable"}


def read_json_or_none(path: Path) -> Any:
    """The JSON in `path`; None when it is missing, truncated or not JSON (e.g. cut short by a kill)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def missing_outputs(out: Path, name: str, outputs: list[str]) -> list[str]:
    """The declared outputs of a stage that are absent, or JSON files that cannot be read (cut short)."""
    folder = stage_dir(out, name)
    return [
        rel
        for rel in outputs
        if not (folder / rel).exists() or (rel.endswith(".json") and read_json_or_none(folder / rel) is None)
    ]


def is_complete(out: Path, name: str, outputs: list[str]) -> bool:
    """A stage is complete when its record can be read and every declared output is present and readable."""
    return read_record(out, name) is not None and not missing_outputs(out, name, outputs)


def read_record(out: Path, name: str) -> dict[str, Any] | None:
    """The stage's `stage.json`; None when missing or unreadable (the stage then counts as not complete)."""
    record = read_json_or_none(stage_dir(out, name) / RECORD)
    return record if isinstance(record, dict) else None


def read_records(out: Path) -> list[dict[str, Any]]:
    """The records of every folder of the run that has one, by folder name (a record holds `MEASURED`'s keys it
    measured: one written before a key was measured lacks it)."""
    records = (read_record(out, p.name) for p in sorted(Path(out).iterdir()) if (p / RECORD).is_file())
    return [record for record in records if record is not None]


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # atomic: a killed run never leaves a half-written file


def write_started(out: Path, name: str, inputs: dict[str, str]) -> None:
    """`started.json`: what a stage was started with, so a rerun after an interruption knows whether it may resume."""
    folder = stage_dir(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / STARTED, {"inputs": inputs, "fingerprint": fingerprint(inputs)})


def read_started(folder: Path) -> dict[str, Any] | None:
    """`started.json` of a stage folder; None when there is none, `UNREADABLE` when it cannot be read."""
    path = Path(folder) / STARTED
    if not path.is_file():
        return None
    started = read_json_or_none(path)
    return started if isinstance(started, dict) else UNREADABLE


def write_record(out: Path, result: StageResult) -> None:
    write_json_atomic(stage_dir(out, result.name) / RECORD, result.to_json())


@dataclass
class Run:
    """One pipeline run: a preset, a data source and an output folder."""

    preset: dict[str, Any]
    out: Path
    data: Path | None = None
    data_options: dict[str, Any] = field(default_factory=dict)  # `mgcc prepare` options for a raw generic dataset

    def folder(self, stage: str) -> Path:
        return stage_dir(self.out, stage)

    @property
    def dataset(self) -> Path:
        return self.folder("prepare") / "dataset"

    @property
    def samples(self) -> Path:
        return self.folder("sample") / "images"

    def overrides(self, bundle: str, *sections: str) -> dict[str, Any]:
        """Bundle overrides from the preset: `<bundle>.common`, then each named section, on top of `dataset_dir`."""
        spec = self.preset[bundle]
        merged: dict[str, Any] = {"dataset_dir": str(self.dataset), **spec.get("common", {})}
        for section in sections:
            merged.update(spec.get(section, {}))
        return merged

    def section(self, bundle: str, name: str) -> dict[str, Any]:
        """One section of the preset's entries for `bundle` (a stage's own settings)."""
        return dict(self.preset[bundle].get(name, {}))


@dataclass(frozen=True)
class Stage:
    """One resumable step of a run, written under `<out>/<name>/`.

    What a stage runs with is its fingerprint (see `fingerprint_parts`); each field below that says "reads" or
    "runs" is part of it, so a change there reruns the stage (and the stages after it)."""

    name: str
    outputs: list[str]  # paths relative to the stage folder that must exist when the stage is complete
    execute: Callable[[Run], StageResult]
    reads: tuple[str, ...] = ()  # dotted preset entries it runs with, e.g. "ldm.common", "segmentation.train"
    reads_whole_preset: bool = False  # it runs with every preset entry (the report)
    reads_data_folder: bool = False  # it reads the data: the preset's `data` section, --data and the data options
    after: tuple[str, ...] = ()  # stages of the same run whose results it always reads
    after_depending_on_settings: Callable[[Run], tuple[str, ...]] | None = None  # more stages it reads, which
    # depend on the run's settings (a segmentation variant reads the samples only when it trains on them)
    bundle: Path | None = None  # the bundle it runs
    configs: tuple[str, ...] = ()  # the bundle's config files it runs (their text is part of its fingerprint)
    settings: dict[str, Any] = field(default_factory=dict)  # anything else it runs with (a variant's overrides)
    checkpoints: tuple[str, ...] = ()  # its resume checkpoints outside its folder (globs under the run folder)

    def __post_init__(self) -> None:
        special = [key for key in self.reads if key in ("", "data")]
        assert not special, f"stage '{self.name}': reads {special}: use reads_whole_preset / reads_data_folder"
        assert isinstance(self.after, tuple), f"stage '{self.name}': `after` is a tuple of stage names"

    def reads_from(self, run: Run) -> tuple[str, ...]:
        """The stages whose results it reads in `run`."""
        extra = self.after_depending_on_settings(run) if self.after_depending_on_settings else ()
        return self.after + tuple(name for name in extra if name not in self.after)


def fingerprint_parts(run: Run, stage: Stage) -> dict[str, str]:
    """What the stage runs with, each part hashed: its preset entries, the bundle config files it runs, its own
    settings, and the fingerprints recorded by the stages it reads from. The part names are stored in each stage's
    record (`stage.json`): renaming one would rerun every stage of existing runs."""
    parts = {}
    for key in stage.reads:
        value: Any = run.preset
        for step in key.split("."):
            value = value.get(step, {}) if isinstance(value, dict) else {}
        parts[f"preset {key}"] = fingerprint(value)
    if stage.reads_data_folder:
        parts["preset data"] = fingerprint(
            {"preset": run.preset.get("data", {}), "folder": str(run.data) if run.data else None, **run.data_options}
        )
    if stage.reads_whole_preset:
        parts["preset (all)"] = fingerprint(run.preset)
    if stage.configs:
        assert stage.bundle is not None, f"stage '{stage.name}' names configs but no bundle"
        parts["bundle configs"] = fingerprint({c: (stage.bundle / "configs" / c).read_text() for c in stage.configs})
    if stage.settings:
        parts["settings"] = fingerprint(stage.settings)
    for name in stage.reads_from(run):
        record = read_record(run.out, name)
        parts[f"stage {name}"] = (record or {}).get("fingerprint") or "absent"
    return parts


def set_aside(folder: Path, current: str, checkpoints: list[Path] = ()) -> None:
    """Before a stage runs, a folder of its earlier run is renamed `<name>.stale-<k>` (kept, not deleted) when that
    run completed (the stage runs again: forced, or with other settings) or was interrupted with other settings,
    with the stage's resume `checkpoints` kept elsewhere (moved into it); so a stage resumes only from checkpoints
    of an interrupted run with the same settings, and never mixes files."""
    started = read_started(folder)
    if not (folder / "stage.json").is_file() and (started is None or started.get("fingerprint") == current):
        return
    k = 1
    while folder.with_name(f"{folder.name}.stale-{k}").exists():
        k += 1
    stale = folder.with_name(f"{folder.name}.stale-{k}")
    folder.rename(stale)
    for path in checkpoints:
        path.rename(stale / path.name)
    print(f"[mgcc] the earlier run of this stage is kept as {stale.name}", flush=True)


def execute_stages(run: Run, stages: list[Stage], force: bool = False) -> None:
    """Run the stages in order, skipping complete ones whose fingerprint is unchanged (unless forced)."""
    for stage in stages:
        parts = fingerprint_parts(run, stage)
        missing = missing_outputs(run.out, stage.name, stage.outputs)
        if not force and missing and read_record(run.out, stage.name) is not None:
            print(
                f"[mgcc] stage '{stage.name}' completed earlier but {', '.join(missing)} is missing or unreadable: "
                "running it again",
                flush=True,
            )
        if not force and is_complete(run.out, stage.name, stage.outputs):
            record = read_record(run.out, stage.name) or {}
            if record.get("fingerprint") in (None, fingerprint(parts)):  # None: recorded before fingerprints
                print(f"[mgcc] stage '{stage.name}' is complete: skipped ({run.folder(stage.name)})")
                continue
            changed = sorted(k for k in parts if record.get("inputs", {}).get(k) != parts[k])
            print(
                f"[mgcc] stage '{stage.name}' ran with other settings (changed: {', '.join(changed)}): "
                "running it again",
                flush=True,
            )
        set_aside(
            run.folder(stage.name),
            fingerprint(parts),
            [p for pattern in stage.checkpoints for p in sorted(run.out.glob(pattern))],
        )
        write_started(run.out, stage.name, parts)
        print(f"[mgcc] stage '{stage.name}' -> {run.folder(stage.name)}", flush=True)
        result = stage.execute(run)
        missing = [rel for rel in stage.outputs if not (run.folder(stage.name) / rel).exists()]
        if missing:
            raise RuntimeError(
                f"stage '{stage.name}' finished without its outputs {missing} in {run.folder(stage.name)}"
            )
        result.inputs = parts
        write_record(run.out, result)
        print(f"[mgcc] stage '{stage.name}' done in {result.seconds:.1f} s, peak RSS {result.peak_rss_mb:.0f} MB")


def run_process(
    name: str, command: list[str], cwd: Path, log_file: Path, env: dict[str, str] | None = None
) -> StageResult:
    """Run `command`, streaming its output to the console and `log_file`; measure wall time and peak RSS."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_file, "ab") as log:
        log.write(f"$ (cd {cwd} && {' '.join(command)})\n".encode())
        proc = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            log.write(line)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise StageError(f"stage '{name}' failed with exit code {proc.returncode}; see {log_file}")
    return StageResult(name, time.perf_counter() - start, usage.ru_maxrss / 1024.0, command)


def unknown_override_keys(config_paths: Sequence[Path], overrides: dict[str, Any]) -> list[str]:
    """Override keys (`key` or `section#key`) that match no key of the merged config files: a misspelled preset
    entry would otherwise add a key nothing reads, and the run would go on with the default."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in config_paths])
    return sorted(key for key in overrides if key not in parser)


def workflow_precision(bundle: Path, config_files: Sequence[str], overrides: dict[str, Any]) -> str | None:
    """What the forward passes of a bundle workflow run in on this machine (`"float32"`, `"bfloat16 autocast,
    channels-last"`, ...): the `precision` of the `AutocastInferer` its config files and `overrides` build, built here
    by the bundle's own code as `monai.bundle run` builds it (from `amp`, `channels_last` and `device`); None for a
    workflow without one. A bad `amp` raises the bundle's own `ValueError`."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(bundle) / "configs" / c) for c in config_files])
    parser.update(overrides)
    found = [
        i
        for i in AUTOCAST_INFERERS
        if i in parser and isinstance(parser[i], dict) and parser[i].get("_target_") == AUTOCAST_TARGET
    ]
    if not found:
        return None
    with importable_as_scripts(bundle), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what it warns of (amp on a slow CPU), the workflow's own log says
        try:
            return parser.get_parsed_content(found[0]).precision
        except RuntimeError as err:  # MONAI's "failed to instantiate": what the bundle's code raised is its cause
            raise (err.__cause__ or err) from None


def run_bundle(
    name: str,
    out: Path,
    bundle: Path,
    config_files: Sequence[str],
    overrides: dict[str, Any],
    shared: dict[str, Any] | None = None,
) -> StageResult:
    """Run one bundle workflow as `python -m monai.bundle run --args_file <out>/<name>/args.json`.

    `overrides` are the stage's own settings: one that matches no config key is refused. `shared` are settings
    of other stages' preset sections that this workflow may also read (the sampler reads the diffusion model's
    schedule, not its epochs): only those its configs know are passed. The result says what the workflow's forward
    passes ran in (`workflow_precision`), found from the same settings before it runs."""
    configs = [bundle / "configs" / c for c in config_files]
    unknown = unknown_override_keys(configs, overrides)
    if unknown:
        raise StageError(
            f"stage '{name}': {', '.join(unknown)} match(es) no key of {', '.join(config_files)} "
            f"in {bundle.name} (misspelled preset entry or override?)"
        )
    if shared:
        ignored = set(unknown_override_keys(configs, shared))
        overrides = {**{k: v for k, v in shared.items() if k not in ignored}, **overrides}
    try:
        precision = workflow_precision(bundle, config_files, overrides)
    except ValueError as err:  # a bad amp or channels_last, refused by the bundle's code
        raise StageError(f"stage '{name}': {err}") from err
    folder = stage_dir(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    args = {
        "config_file": [str(bundle / "configs" / c) for c in config_files],
        "meta_file": str(bundle / "configs" / "metadata.json"),
        "logging_file": str(bundle / "configs" / "logging.conf"),
        "bundle_root": str(bundle),
        **overrides,
    }
    args_file = folder / "args.json"
    args_file.write_text(json.dumps(args, indent=2))
    command = [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(args_file)]
    result = run_process(name, command, cwd=bundle, log_file=folder / "log.txt")
    result.precision = precision
    return result


def run_python(name: str, out: Path, function: Callable[[Path], None]) -> StageResult:
    """Run an in-process stage (data preparation, report); peak RSS is this process's high-water mark."""
    import resource

    folder = stage_dir(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    function(folder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return StageResult(name, time.perf_counter() - start, peak, [f"{function.__module__}.{function.__qualname__}"])
