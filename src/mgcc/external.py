"""`mgcc evaluate`: score a trained MGCC model on another dataset (an external test).

The model is a training stage folder of a run (`<run>/segmentation-<variant>/`, holding `args.json` and
`models/model.pt`), the `model.pt` in such a folder, or a run folder with one trained model. The dataset is
any form `mgcc run` takes. It is prepared under `<out>/prepare/dataset`, and the segmentation bundle's
`evaluate.json` runs with the model's own configs and settings (width, input size, perturbations) on its test
split or on all its images, writing the same per-image CSV, summary and overlays as a run's evaluation, under
`<out>/evaluate/evaluation/`. Without `--out`, the results go to `<run>/external/<dataset name>-<section>/`, where
the run's report lists them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mgcc import SEG_BUNDLE
from mgcc.data.datalist import SECTIONS, label_path
from mgcc.errors import UsageError
from mgcc.pipeline import GENERATOR_STAGES, make_run
from mgcc.report import detection_text
from mgcc.stages import Run, Stage, StageResult, execute_stages, run_bundle
from mgcc.trained import model_settings, training_stage


def section_datalist(dataset: Path, section: str, only_class: str | None, out: Path) -> Path:
    """A datalist whose `test` section holds the chosen images (absolute paths): one section or all of them."""
    datalist = json.loads((dataset / "datalist.json").read_text())
    entries = [e for s in (SECTIONS if section == "all" else (section,)) for e in datalist[s]]
    if only_class is not None:
        entries = [e for e in entries if e["class"] in only_class.split(",")]
    if not entries:
        raise UsageError(
            f"{dataset}: no images in section '{section}'" + (f" of class {only_class}" if only_class else "")
        )
    for entry in entries:  # the train split's unlabeled part has masks on disk too
        entry.update(image=str(dataset / entry["image"]), label=str(dataset / label_path(Path(entry["image"]).stem)))
    path = out / "datalist.json"
    path.write_text(json.dumps({"test": entries}, indent=2))
    return path


def seen_in_training(stage: Path, dataset: Path, scored: Path) -> list[str]:
    """The scored images (entries of the `scored` datalist) whose pixels the model saw in training or validation:
    images of the prepared dataset `stage` trained on, outside its test split."""
    args = json.loads((stage / "args.json").read_text())
    manifest = Path(args.get("dataset_dir", "")) / "manifest.json"
    if not manifest.is_file():
        return []
    seen = {r["pixel_sha256"] for r in json.loads(manifest.read_text())["images"] if r["section"] != "test"}
    records = json.loads((dataset / "manifest.json").read_text())["images"]
    pixels = {str(dataset / r["image"]): r["pixel_sha256"] for r in records}
    return [e["image"] for e in json.loads(scored.read_text())["test"] if pixels.get(e["image"]) in seen]


def evaluate(
    model: str,
    data: str,
    section: str = "test",
    out: str | None = None,
    seed: int = 0,
    include_normal: bool = False,
    only_class: str | None = None,
    **data_options: Any,
) -> None:
    """Score a trained MGCC model on a dataset: per-image CSV, summary JSON and overlays.

    Args:
        model: a training stage folder (`<run>/segmentation-mgcc-synthetic`), its `models/model.pt`, or a run folder
            with one trained model.
        data: the dataset: BUSI layout, generic layout (with the data options) or a prepared folder.
        section: `test` (the test split of the dataset, split with --seed) or `all` (every image).
        out: output folder; default `<run>/external/<dataset name>-<section>`.
        seed: the split seed of the dataset (for --section test).
        include_normal: keep images of class `normal` (BUSI's lesion-free images).
        only_class: comma-separated classes to score (e.g. `normal`); default: every class.
        data_options: `mgcc prepare`'s options for a generic-layout dataset (see `mgcc run`).
    """
    if section not in ("test", "all"):
        raise UsageError(f"--section {section}: expected 'test' or 'all'")
    stage = training_stage(Path(model))
    configs, settings = model_settings(stage)
    name = f"{Path(data).resolve().name}-{section}" + (f"-{only_class.replace(',', '+')}" if only_class else "")
    preset = {
        "name": f"external test of {stage}",
        "data": {"labeled_fraction": 0.125, "seed": seed, "include_normal": bool(include_normal)},
    }
    run = make_run(preset, data, out or str(stage.parent / "external" / name), data_options)

    def execute(run_: Run) -> StageResult:
        folder = run_.folder("evaluate")
        folder.mkdir(parents=True, exist_ok=True)
        return run_bundle(
            "evaluate",
            run_.out,
            SEG_BUNDLE,
            scoring.configs,
            {
                **settings,
                "dataset_dir": str(run_.dataset),
                "output_dir": str(folder),
                "datalist": str(section_datalist(run_.dataset, section, only_class, folder)),
                "ckpt_dir": str(stage / "models"),
            },
        )

    scoring = Stage(
        name="evaluate",
        outputs=["evaluation/summary.json", "evaluation/per_image.csv"],
        execute=execute,
        reads_data_folder=True,
        after=("prepare",),
        bundle=SEG_BUNDLE,
        configs=(*configs, "evaluate.json"),
        settings={
            "model": str(stage),
            "model_settings": settings,
            "section": section,
            "only_class": only_class,
            "weights_mtime_ns": (stage / "models" / "model.pt").stat().st_mtime_ns,
        },
    )
    execute_stages(run, [GENERATOR_STAGES[0], scoring])
    summary_file = run.folder("evaluate") / "evaluation" / "summary.json"
    summary = json.loads(summary_file.read_text())
    seen = seen_in_training(stage, run.dataset, run.folder("evaluate") / "datalist.json")
    summary["images_seen_in_training"] = len(seen)  # counted in the summary, not only said
    summary_file.write_text(json.dumps(summary, indent=2))
    if seen:
        print(
            f"[mgcc] warning: {len(seen)} of the {summary['n']} scored images were in the model's training or "
            f"validation split (same pixels, e.g. {Path(seen[0]).name}): this is not a held-out test",
            file=sys.stderr,
        )
    not_held_out = f" ({len(seen)} of them seen in training: not a held-out test)" if seen else ""
    detection = detection_text(summary)
    print(
        f"[mgcc] {stage.name} on {data} ({section}): Dice {summary['dice']['mean']:.4f} ± {summary['dice']['std']:.4f}"
        f", n {summary['n']}{not_held_out}{'; ' + detection if detection else ''} -> "
        f"{run.folder('evaluate') / 'evaluation'}"
    )
    if (stage.parent / "report" / "report.md").is_file() and run.out.parent == stage.parent / "external":
        print(f"[mgcc] to list it in the run's report: mgcc run --preset PRESET --out {stage.parent} --stage report")
