"""`mgcc run`: the two-stage MGCC method end to end, one resumable stage at a time.

`run_stages` is the stage graph, in order (`STAGE_NAMES`: prepare, the generator's stages, the segmentation model's
training and evaluation, ...), and `mgcc.stages` runs it. Each stage writes `<out>/<stage>/`, except that the
segmentation model's training and evaluation are named after the variant the preset trains
(`segmentation-mgcc-synthetic/`, `evaluate-mgcc-synthetic/`; see `mgcc.variants`).

Every bundle stage goes through the bundles' own configs via `python -m monai.bundle run`; this module only
decides folders and overrides. A stage whose `stage.json` record and outputs exist is skipped, so a rerun after
a crash continues where it stopped, unless what the stage would run with changed since: each record keeps a
fingerprint of the stage's preset entries, its bundle's configs and the fingerprints of the stages it reads from,
and a stage whose fingerprint changed runs again (and with it every stage that reads from it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mgcc import LDM_BUNDLE, SEG_BUNDLE
from mgcc.errors import UsageError
from mgcc.presets import PresetError, load_preset
from mgcc.stages import (
    Run,
    Stage,
    StageResult,
    bundle_settings,
    execute_stages,
    make_output_folder,
    run_bundle,
    run_python,
)
from mgcc.variants import VARIANTS, adopt_legacy_folders, evaluation_folder, run_variant, training_folder

DEFAULT_OUT = Path("outputs")  # under the working folder


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
            {**source, "ckpt_dir": str(model_folder(run) / "models"), "output_dir": str(folder / name)},
            shared=run.overrides("segmentation"),
        )
        for name, source in sets.items()
    ]
    rates = {name: lesion_rate((folder / name).glob("*_seg.png")) for name in sets}
    agreement = mask_agreement(run.samples, folder / "synthetic")
    if agreement is not None:
        rates["synthetic"]["mask_dice"] = agreement
    (folder / "lesion_rate.json").write_text(json.dumps(rates, indent=2))
    return StageResult(
        "lesions",
        time.perf_counter() - start,
        max(r.peak_rss_mb for r in results),
        results[-1].command,
        precision=results[-1].precision,
    )


def _report(run: Run) -> StageResult:
    from mgcc.report import write_report

    return run_python("report", run.out, lambda folder: write_report(run.out, folder, run.preset))


def _package(run: Run) -> StageResult:
    """Ready bundles of the run's trained models (`mgcc export`): `package/ultrasound_mgcc_segmentation/` and
    `package/ultrasound_ldm_generation/`, which run with no overrides."""
    from mgcc.export import export_generator, export_segmentation

    def work(folder: Path) -> None:
        name = run.out.name
        export_segmentation(model_folder(run), folder / SEG_BUNDLE.name, name)
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


def run_stages(variant: str) -> dict[str, Stage]:
    """The stages of `mgcc run` that trains `variant` (the preset's, `run_variant`), in order, by what they do: the
    names `--stage` takes. Each writes `<out>/<name>/`, but segmentation and evaluate, which are named after the
    variant (`segmentation-<variant>/`, `evaluate-<variant>/`)."""
    trained, evaluated = training_folder(variant), evaluation_folder(variant)
    return {
        **{stage.name: stage for stage in GENERATOR_STAGES},
        "segmentation": segmentation_stage(variant, ["train.json"], {}),
        "evaluate": evaluate_stage(variant),
        "lesions": Stage(
            name="lesions",
            outputs=["lesion_rate.json"],
            execute=_lesions,
            reads=("segmentation.common",),
            after=(trained, "sample"),
            bundle=SEG_BUNDLE,
            configs=LESIONS_CONFIGS,
        ),
        "report": Stage(
            name="report",
            outputs=["report.md", "report.html", "summary.json"],
            execute=_report,
            reads_whole_preset=True,
            after=("quality", evaluated, "lesions"),
        ),
        "package": Stage(
            name="package",
            outputs=[
                f"{SEG_BUNDLE.name}/models/model.ts",
                f"{SEG_BUNDLE.name}/models/model.onnx",
                f"{LDM_BUNDLE.name}/models/diffusion.pt",
            ],
            execute=_package,
            after=(trained, evaluated, "sample", "quality"),
        ),
    }


#: what `mgcc run --stage` takes, in the order the stages run (the same whichever variant the preset trains)
STAGE_NAMES = tuple(run_stages(next(iter(VARIANTS))))


def model_folder(run: Run) -> Path:
    """The training folder of the variant the run's preset trains: `segmentation-<variant>/`."""
    return run.folder(training_folder(run_variant(run.preset)))


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
        stage: run only this stage (forced, even if complete): one of `STAGE_NAMES` (segmentation and evaluate: the
            preset's variant's, in `segmentation-<variant>/` and `evaluate-<variant>/`).
        data_options: `mgcc prepare`'s options for a generic-layout dataset: --layout, --images, --masks,
            --image-pattern, --mask-pattern, --classes, --id-column, --class-column, --group-column,
            --mask-threshold.
    """
    spec = preset if isinstance(preset, dict) else load_preset(preset)
    variant = run_variant(spec)
    stages = run_stages(variant)
    if stage is not None and stage not in stages:
        raise UsageError(f"--stage {stage}: unknown stage; stages: {', '.join(STAGE_NAMES)}")
    run_ = make_run(spec, data, out, data_options)
    adopt_legacy_folders(run_.out, variant)
    execute_stages(run_, [stages[stage]] if stage else list(stages.values()), force=stage is not None)
    report = run_.folder("report") / "report.md"
    print(f"[mgcc] report: {report}" if report.exists() else f"[mgcc] outputs in {run_.out}")
