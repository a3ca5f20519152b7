"""Pipeline stages: each one writes under `<out>/<stage>/` and leaves a `stage.json` record when complete.

A bundle stage runs `python -m monai.bundle run` as its own process from the bundle folder, with the overrides
written to `<out>/<stage>/args.json` (readable, and re-runnable by hand). Running each bundle in its own process
keeps the two bundles' `scripts` packages apart and gives each stage its own peak-memory figure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgcc.errors import MgccError, UsageError

RECORD = "stage.json"
#: the line the segmentation bundle's `AutocastInferer` logs when built: `... - INFO - precision: float32`
PRECISION_LINE = re.compile(r" - INFO - precision: (.+)$")
STARTED = "started.json"


class StageError(MgccError, RuntimeError):
    """A stage failed; the message names the stage and its log file."""


@dataclass
class StageResult:
    name: str
    seconds: float
    peak_rss_mb: float
    command: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # the hashed parts of what the stage ran with
    precision: str | None = None  # what the segmentation bundle's forward passes ran in (its log's `precision:` line)

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


def run_process(
    name: str, command: list[str], cwd: Path, log_file: Path, env: dict[str, str] | None = None
) -> StageResult:
    """Run `command`, streaming its output to the console and `log_file`; measure wall time and peak RSS, and
    note the precision the process says it ran in (a `precision: ...` log line)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start, precision = time.perf_counter(), None
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
            found = PRECISION_LINE.search(line.decode(errors="replace"))
            precision = found.group(1).strip() if found else precision
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise StageError(f"stage '{name}' failed with exit code {proc.returncode}; see {log_file}")
    return StageResult(name, time.perf_counter() - start, usage.ru_maxrss / 1024.0, command, precision=precision)


def unknown_override_keys(config_paths: Sequence[Path], overrides: dict[str, Any]) -> list[str]:
    """Override keys (`key` or `section#key`) that match no key of the merged config files: a misspelled preset
    entry would otherwise add a key nothing reads, and the run would go on with the default."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in config_paths])
    return sorted(key for key in overrides if key not in parser)


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
    schedule, not its epochs): only those its configs know are passed."""
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
    return run_process(name, command, cwd=bundle, log_file=folder / "log.txt")


def run_python(name: str, out: Path, function: Callable[[Path], None]) -> StageResult:
    """Run an in-process stage (data preparation, report); peak RSS is this process's high-water mark."""
    import resource

    folder = stage_dir(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    function(folder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return StageResult(name, time.perf_counter() - start, peak, [f"{function.__module__}.{function.__qualname__}"])
