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
RUN_ONLY = ("config_file", "meta_file", "logging_file", "bundle_root", "dataset_dir", "datalist", "output_dir",
            "ckpt_dir", "synthetic_dir", "unlabeled_source", "compile_cache_dir", "resume", "max_iterations",
            "val_interval", "num_workers", "num_threads", "show_progress")


def training_stage(model: Path, argument: str = "--model") -> Path:
    """The training stage folder of `model` (a run folder, a training stage folder, or its `models/model.pt`);
    `argument` is how the command names it in an error."""
    model = model.resolve()
    for candidate in (model / "segmentation", model, model.parent.parent if model.suffix == ".pt" else None):
        if candidate is not None and (candidate / "args.json").is_file() and (candidate / "models" / "model.pt").is_file():
            return candidate
    if model.is_dir() and any(model.glob("*/stage.json")):  # a run whose segmentation stage has not finished
        raise UsageError(f"{argument} {model}: the run has no trained segmentation model yet "
                         f"({model / 'segmentation' / 'models' / 'model.pt'} is missing); finish its segmentation "
                         f"stage (mgcc run --preset PRESET --out {model}) or name a training stage folder")
    raise UsageError(f"{argument} {model}: not a run, a training stage folder (args.json + models/model.pt) "
                     "or the model.pt of one")


def model_settings(stage: Path) -> tuple[list[str], dict[str, Any]]:
    """The bundle config files (without evaluate.json) and overrides that define the trained model."""
    args = json.loads((stage / "args.json").read_text())
    configs = [Path(c).name for c in args["config_file"] if Path(c).name != "evaluate.json"]
    return configs, {k: v for k, v in args.items() if k not in RUN_ONLY}
