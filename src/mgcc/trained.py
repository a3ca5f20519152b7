"""A run's trained segmentation model: where it is and what it was trained with.

Used by `mgcc evaluate` (`mgcc.external`) and `mgcc export` (`mgcc.export`, also the pipeline's `package` stage);
it reads a run's folders and imports nothing of the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mgcc.errors import UsageError

#: what a training stage ran with that is not a property of the model
RUN_ONLY = (
    "config_file",
    "meta_file",
    "logging_file",
    "bundle_root",
    "dataset_dir",
    "datalist",
    "output_dir",
    "ckpt_dir",
    "synthetic_dir",
    "unlabeled_source",
    "compile_cache_dir",
    "resume",
    "max_iterations",
    "val_interval",
    "num_workers",
    "num_threads",
    "show_progress",
)


def _is_training_stage(folder: Path) -> bool:
    return (folder / "args.json").is_file() and (folder / "models" / "model.pt").is_file()


def training_stage(model: Path, argument: str = "--model") -> Path:
    """The training stage folder of `model`: a training stage folder, its `models/model.pt`, or a run folder with
    one trained model (`segmentation-<variant>/`, or `segmentation/` in a run made before folders were named after
    the variant); `argument` is how the command names it in an error."""
    model = model.resolve()
    if model.suffix == ".pt" and _is_training_stage(model.parent.parent):
        return model.parent.parent
    if _is_training_stage(model):
        return model
    trained = sorted(p for p in model.glob("segmentation*") if ".stale-" not in p.name and _is_training_stage(p))
    if len(trained) == 1:
        return trained[0]
    if trained:
        raise UsageError(
            f"{argument} {model}: the run has {len(trained)} trained models "
            f"({', '.join(p.name for p in trained)}): name one, e.g. {argument} {trained[0]}"
        )
    if model.is_dir() and any(model.glob("*/stage.json")):  # a run whose segmentation stage has not finished
        raise UsageError(
            f"{argument} {model}: the run has no trained segmentation model yet (no "
            "segmentation-<variant>/models/model.pt); finish its segmentation stage "
            f"(mgcc run --preset PRESET --out {model}) or name a training stage folder"
        )
    raise UsageError(
        f"{argument} {model}: not a run, a training stage folder (args.json + models/model.pt) or the model.pt of one"
    )


def model_settings(stage: Path) -> tuple[list[str], dict[str, Any]]:
    """The bundle config files (without evaluate.json) and overrides that define the trained model."""
    args = json.loads((stage / "args.json").read_text())
    configs = [Path(c).name for c in args["config_file"] if Path(c).name != "evaluate.json"]
    return configs, {k: v for k, v in args.items() if k not in RUN_ONLY}
