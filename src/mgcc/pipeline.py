"""`mgcc run`: the two-stage MGCC method end to end, one resumable stage at a time.

prepare -> autoencoder -> diffusion -> sample -> quality -> segmentation -> evaluate -> lesions -> report -> package

Each stage writes `<out>/<stage>/`, except that the segmentation model's training and evaluation are named after the
variant the preset trains (`segmentation-mgcc-synthetic/`, `evaluate-mgcc-synthetic/`; see `mgcc.variants`).

Every bundle stage goes through the bundles' own configs via `python -m monai.bundle run`; this module only
decides folders and overrides. A stage whose `stage.json` record and outputs exist is skipped, so a rerun after
a crash continues where it stopped, unless what the stage would run with changed since: each record keeps a
fingerprint of the stage's preset entries, its bundle's configs and the fingerprints of the stages it reads from,
and a stage whose fingerprint changed runs again (and with it every stage that reads from it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgcc import LDM_BUNDLE, SEG_BUNDLE
from mgcc.errors import UsageError
from mgcc.presets import PresetError, load_preset
from mgcc.stages import (
    StageResult,
    bundle_settings,
    fingerprint,
    is_complete,
    make_output_folder,
    missing_outputs,
    read_record,
    read_started,
    run_bundle,
    run_python,
    stage_dir,
    write_record,
    write_started,
)
from mgcc.variants import adopt_legacy_folders, evaluation_folder, run_variant, training_folder

DEFAULT_OUT = Path("outputs")  # under the working folder


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

    @property
    def variant(self) -> str:
        """The segmentation variant the preset trains (`mgcc-synthetic`, ...), which names its folders."""
        return run_variant(self.preset)

    @property
    def model_folder(self) -> Path:
        """The training folder of that variant: `segmentation-<variant>/`."""
        return self.folder(training_folder(self.variant))

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


# ----------------------------------------------------------------------------------------------- stages
def _prepare(run: Run) -> StageResult:
    from mgcc.data.phantom import make_phantom_dataset
    from mgcc.data.sources import prepare_any

    spec = run.preset["data"]
    if run.data is None and "phantom" not in spec:
        raise UsageError(f"preset '{run.preset['name']}' has no built-in data: pass --data DIR (e.g. a BUSI folder)")

    def work(folder: Path) -> None:
        source = run.data
        if source is None:
            phantom = spec["phantom"]
            source = make_phantom_dataset(
                folder / "phantom", n=phantom["n"], size=phantom["size"], seed=phantom["seed"]
            )
        summary = prepare_any(
            Path(source),
            run.dataset,
            labeled_fraction=spec["labeled_fraction"],
            seed=spec["seed"],
            include_normal=spec.get("include_normal", False),
            options=run.data_options,
        )
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))

    return run_python("prepare", run.out, work)


def _ldm_folders(run: Run, stage: str) -> dict[str, str]:
    return {"output_dir": str(run.folder(stage)), "ckpt_dir": str(run.folder("ldm_models"))}


AUTOENCODER_CONFIGS = ("train_autoencoder.json",)
DIFFUSION_CONFIGS = ("train_autoencoder.json", "train_diffusion.json")
SAMPLE_CONFIGS = ("inference.json",)
QUALITY_CONFIGS = ("train_autoencoder.json", "evaluate.json")
EVALUATE_CONFIGS = ("train.json", "evaluate.json")
LESIONS_CONFIGS = ("inference.json",)


def _autoencoder(run: Run) -> StageResult:
    return run_bundle(
        "autoencoder",
        run.out,
        LDM_BUNDLE,
        AUTOENCODER_CONFIGS,
        {**run.section("ldm", "autoencoder"), **_ldm_folders(run, "autoencoder")},
        shared=run.overrides("ldm"),
    )


def _diffusion(run: Run) -> StageResult:
    return run_bundle(
        "diffusion",
        run.out,
        LDM_BUNDLE,
        DIFFUSION_CONFIGS,
        {**run.section("ldm", "diffusion"), **_ldm_folders(run, "diffusion")},
        shared=run.overrides("ldm", "autoencoder"),
    )


def _sample(run: Run) -> StageResult:
    return run_bundle(
        "sample",
        run.out,
        LDM_BUNDLE,
        SAMPLE_CONFIGS,
        {**run.section("ldm", "sample"), **_ldm_folders(run, "sample"), "sample_dir": str(run.samples)},
        shared=run.overrides("ldm", "autoencoder", "diffusion"),
    )


def _quality(run: Run) -> StageResult:
    """Generator quality (the LDM bundle's evaluate.json): reconstruction PSNR/SSIM, diversity, copy check."""
    return run_bundle(
        "quality",
        run.out,
        LDM_BUNDLE,
        QUALITY_CONFIGS,
        {**_ldm_folders(run, "quality"), "sample_dir": str(run.samples)},
        shared=run.overrides("ldm", "autoencoder"),
    )


def trains_on_synthetic(settings: dict[str, Any]) -> bool:
    """Whether a segmentation training with these (merged) settings reads the generator's samples."""
    return bool(
        settings.get("synthetic_pairs")
        or (settings.get("unlabeled_batch_size") and settings.get("unlabeled_source") in ("synthetic", "both"))
    )


def segmentation_stage(variant: str, config_files: list[str], overrides: dict[str, Any]) -> Stage:
    """Train one segmentation variant under `segmentation-<variant>/` (with `compile`, every variant of the run shares
    one compilation cache, `<out>/inductor_cache`: only the first compiles). A run stopped midway resumes from its
    last checkpoint (every `val_interval` iterations)."""
    name = training_folder(variant)

    def training_overrides(run: Run) -> dict[str, Any]:
        """The variant's settings: the preset's `segmentation.train`, then the variant's own overrides."""
        return {**run.section("segmentation", "train"), "synthetic_dir": str(run.samples), **overrides}

    def execute(run: Run) -> StageResult:
        folder = run.folder(name)
        resume = any((folder / "models").glob("checkpoint_epoch=*.pt"))  # an interrupted run of the same settings
        return run_bundle(
            name,
            run.out,
            SEG_BUNDLE,
            config_files,
            {
                **training_overrides(run),
                "output_dir": str(folder),
                "ckpt_dir": str(folder / "models"),
                "compile_cache_dir": str(run.out / "inductor_cache"),
                "resume": resume,
            },
            shared=run.overrides("segmentation"),
        )

    def samples_if_trained_on(run: Run) -> tuple[str, ...]:
        """The sample stage only when this variant trains on synthetic images: adding the generator to a run later
        must not retrain the variants that never read its samples."""
        settings = bundle_settings(SEG_BUNDLE, config_files, training_overrides(run))
        return ("sample",) if trains_on_synthetic(settings) else ()

    return Stage(
        name=name,
        outputs=["models/model.pt", "training_history.csv"],
        execute=execute,
        reads=("segmentation.common", "segmentation.train"),
        after=("prepare",),
        after_depending_on_settings=samples_if_trained_on,
        bundle=SEG_BUNDLE,
        configs=tuple(config_files),
        settings={"overrides": overrides},
    )


def evaluate_stage(variant: str) -> Stage:
    """Evaluate one trained variant on the test split under `evaluate-<variant>/`."""
    trained, name = training_folder(variant), evaluation_folder(variant)

    def execute(run: Run) -> StageResult:
        return run_bundle(
            name,
            run.out,
            SEG_BUNDLE,
            EVALUATE_CONFIGS,
            {
                **run.section("segmentation", "evaluate"),
                "output_dir": str(run.folder(name)),
                "ckpt_dir": str(run.folder(trained) / "models"),
            },
            shared=run.overrides("segmentation", "train"),
        )

    return Stage(
        name=name,
        outputs=["evaluation/summary.json", "evaluation/per_image.csv"],
        execute=execute,
        reads=("segmentation.common", "segmentation.train", "segmentation.evaluate"),
        after=(trained,),
        bundle=SEG_BUNDLE,
        configs=EVALUATE_CONFIGS,
    )


def _lesions(run: Run) -> StageResult:
    """The trained MGCC model segments the synthetic images and the real test images (the segmentation bundle's
    inference.json); the share of each set with one clear lesion goes to `lesions/lesion_rate.json`, and for
    samples generated from a mask, how well the model's mask agrees with it (Dice)."""
    from mgcc.lesions import lesion_rate, mask_agreement

    folder = run.folder("lesions")
    sets = {
        "synthetic": {"input_dir": str(run.samples), "datalist": None},
        "real_test": {"datalist": str(run.dataset / "datalist.json"), "datalist_section": "test"},
    }
    start = time.perf_counter()
    results = [
        run_bundle(
            "lesions",
            run.out,
            SEG_BUNDLE,
            LESIONS_CONFIGS,
            {**source, "ckpt_dir": str(run.model_folder / "models"), "output_dir": str(folder / name)},
            shared=run.overrides("segmentation"),
        )
        for name, source in sets.items()
    ]
    rates = {name: lesion_rate((folder / name).glob("*_seg.png")) for name in sets}
    agreement = mask_agreement(run.samples, folder / "synthetic")
    if agreement is not None:
        rates["synthetic"]["mask_dice"] = agreement
    (folder / "lesion_rate.json").write_text(json.dumps(rates, indent=2))
    return StageResult("lesions", time.perf_counter() - start, max(r.peak_rss_mb for r in results), results[-1].command)


def _report(run: Run) -> StageResult:
    from mgcc.report import write_report

    return run_python("report", run.out, lambda folder: write_report(run.out, folder, run.preset))


def _package(run: Run) -> StageResult:
    """Ready bundles of the run's trained models (`mgcc export`): `package/ultrasound_mgcc_segmentation/` and
    `package/ultrasound_ldm_generation/`, which run with no overrides."""
    from mgcc.export import export_generator, export_segmentation

    def work(folder: Path) -> None:
        name = run.out.name
        export_segmentation(run.model_folder, folder / SEG_BUNDLE.name, name)
        export_generator(run.out, folder / LDM_BUNDLE.name, name)

    return run_python("package", run.out, work)


LDM_READS = ("ldm.common", "ldm.autoencoder")
#: the stages up to the generator's quality, the same for every preset
GENERATOR_STAGES: list[Stage] = [
    Stage(name="prepare", outputs=["dataset/datalist.json", "summary.json"], execute=_prepare, reads_data_folder=True),
    Stage(
        name="autoencoder",
        outputs=["autoencoder_history.csv", "../ldm_models/autoencoder.pt"],
        execute=_autoencoder,
        reads=LDM_READS,
        after=("prepare",),
        bundle=LDM_BUNDLE,
        configs=AUTOENCODER_CONFIGS,
        checkpoints=("ldm_models/autoencoder_resume_checkpoint_*.pt",),
    ),
    Stage(
        name="diffusion",
        outputs=["diffusion_history.csv", "../ldm_models/diffusion.pt"],
        execute=_diffusion,
        reads=(*LDM_READS, "ldm.diffusion"),
        after=("autoencoder",),
        bundle=LDM_BUNDLE,
        configs=DIFFUSION_CONFIGS,
        checkpoints=("ldm_models/diffusion_resume_checkpoint_*.pt", "ldm_models/diffusion_snapshot_checkpoint_*.pt"),
    ),
    Stage(
        name="sample",
        outputs=["images/manifest.json"],
        execute=_sample,
        reads=(*LDM_READS, "ldm.diffusion", "ldm.sample"),
        after=("diffusion",),
        bundle=LDM_BUNDLE,
        configs=SAMPLE_CONFIGS,
    ),
    Stage(
        name="quality",
        outputs=["quality.json"],
        execute=_quality,
        reads=LDM_READS,
        after=("sample",),
        bundle=LDM_BUNDLE,
        configs=QUALITY_CONFIGS,
    ),
]
#: what `mgcc run --stage` takes: the stages by what they do (segmentation and evaluate: the preset's variant's)
STAGE_NAMES = (
    "prepare",
    "autoencoder",
    "diffusion",
    "sample",
    "quality",
    "segmentation",
    "evaluate",
    "lesions",
    "report",
    "package",
)


def run_stages(preset: dict[str, Any]) -> list[Stage]:
    """The stages of `mgcc run` with `preset`, in order; the segmentation model trained is the preset's variant."""
    variant = run_variant(preset)
    trained, evaluated = training_folder(variant), evaluation_folder(variant)
    return [
        *GENERATOR_STAGES,
        segmentation_stage(variant, ["train.json"], {}),
        evaluate_stage(variant),
        Stage(
            name="lesions",
            outputs=["lesion_rate.json"],
            execute=_lesions,
            reads=("segmentation.common",),
            after=(trained, "sample"),
            bundle=SEG_BUNDLE,
            configs=LESIONS_CONFIGS,
        ),
        Stage(
            name="report",
            outputs=["report.md", "report.html", "summary.json"],
            execute=_report,
            reads_whole_preset=True,
            after=("quality", evaluated, "lesions"),
        ),
        Stage(
            name="package",
            outputs=[
                f"{SEG_BUNDLE.name}/models/model.ts",
                f"{SEG_BUNDLE.name}/models/model.onnx",
                f"{LDM_BUNDLE.name}/models/diffusion.pt",
            ],
            execute=_package,
            after=(trained, evaluated, "sample", "quality"),
        ),
    ]


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


def unknown_preset_entries(preset: dict[str, Any]) -> list[str]:
    """Entries of the preset's bundle sections (`ldm.*`, `segmentation.*`) that no config file of that bundle
    defines (for `a#b`, its top-level key `a`): a misspelled entry would otherwise be dropped by every stage (each
    stage passes on only what its configs know)."""
    unknown = []
    for key, bundle in (("ldm", LDM_BUNDLE), ("segmentation", SEG_BUNDLE)):
        known = {k for config in (bundle / "configs").glob("*.json") for k in json.loads(config.read_text())}
        unknown += [
            f"{key}.{section}.{k}"
            for section, values in preset.get(key, {}).items()
            for k in values
            if k.split("#")[0] not in known
        ]
    return unknown


def make_run(preset: str | dict[str, Any], data: str | None, out: str | None, data_options: dict[str, Any]) -> Run:
    """A run of `preset` (a name, path or loaded preset) on `data` in `out` (default `outputs/<preset>`)."""
    from mgcc.data.sources import checked_options

    spec = preset if isinstance(preset, dict) else load_preset(preset)
    unknown = unknown_preset_entries(spec)
    if unknown:
        raise PresetError(
            f"preset {spec['name']}: {', '.join(unknown)} match(es) no key of the bundle's configs (misspelled?)"
        )
    run_ = Run(
        spec,
        (Path(out) if out else DEFAULT_OUT / spec["name"]).resolve(),
        Path(data).resolve() if data else None,
        checked_options(data_options),
    )
    if run_.data is not None and not run_.data.is_dir():
        raise UsageError(f"--data {data}: not a folder")
    if run_.data_options and run_.data is None:
        raise UsageError(f"{', '.join('--' + k for k in run_.data_options)} need(s) --data (a raw dataset folder)")
    if run_.data is not None and (
        run_.out == run_.data or run_.data in run_.out.parents or run_.out in run_.data.parents
    ):
        raise UsageError(
            f"--out {run_.out}: must not be inside, equal to or above --data {run_.data} "
            "(the dataset is never written to); nothing was written"
        )
    make_output_folder(run_.out)
    return run_


def run(
    preset: str = "demo", data: str | None = None, out: str | None = None, stage: str | None = None, **data_options: Any
) -> None:
    """Run the MGCC pipeline.

    Args:
        preset: preset name in `configs/` (demo, busi-cpu, busi-gpu) or a path to a preset JSON file.
        data: the dataset: a BUSI-layout folder, a generic-layout folder (with the data options below) or a folder
            prepared by `mgcc prepare` (split again with the preset's seed); default: the preset's phantom data.
        out: output folder; default `outputs/<preset>`.
        stage: run only this stage (forced, even if complete): one of prepare, autoencoder, diffusion, sample,
            quality, segmentation, evaluate, lesions, report, package (segmentation and evaluate: the preset's
            variant's, in `segmentation-<variant>/` and `evaluate-<variant>/`).
        data_options: `mgcc prepare`'s options for a generic-layout dataset: --layout, --images, --masks,
            --image-pattern, --mask-pattern, --classes, --id-column, --class-column, --group-column,
            --mask-threshold.
    """
    spec = preset if isinstance(preset, dict) else load_preset(preset)
    stages = run_stages(spec)
    variant = run_variant(spec)
    folder = {"segmentation": training_folder(variant), "evaluate": evaluation_folder(variant)}.get(stage, stage)
    chosen = [s for s in stages if stage is None or s.name == folder]
    if not chosen:
        raise UsageError(f"--stage {stage}: unknown stage; stages: {', '.join(STAGE_NAMES)}")
    run_ = make_run(spec, data, out, data_options)
    adopt_legacy_folders(run_.out, variant)
    execute_stages(run_, chosen, force=stage is not None)
    report = run_.folder("report") / "report.md"
    print(f"[mgcc] report: {report}" if report.exists() else f"[mgcc] outputs in {run_.out}")
