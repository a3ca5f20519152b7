"""Every config of the segmentation bundle parses, instantiates and passes MONAI's property checks (tiny width).

What `python -m monai.bundle run` builds before it trains or infers: the datasets, network, trainer or evaluator
and handlers, so a broken key in any config fails here, in the default suite, not in a long integration run.
"""

import os

import pytest

from mgcc import SEG_BUNDLE
from mgcc.bundles import importable_as_scripts

TINY = {
    "base_channels": 8,
    "spatial_size": [64, 64],
    "num_workers": 0,
    "max_iterations": 4,
    "val_interval": 2,
    "show_progress": False,
}
CONFIGS = {
    "mgcc": (["train.json"], "train", "train#trainer"),
    "supervised": (["train.json", "train_supervised.json"], "train", "train#trainer"),
    "labeled-only": (["train.json", "train_labeled_only.json"], "train", "train#trainer"),
    "cct": (["train.json", "train_cct.json"], "train", "train#trainer"),
    "mean-teacher": (["train.json", "train_mean_teacher.json"], "train", "train#trainer"),
    "evaluate": (["train.json", "evaluate.json"], "train", "validate#evaluator"),  # as `monai.bundle run` runs it
    "inference": (["inference.json"], "infer", "evaluator"),
    "score": (["inference.json", "score.json"], "infer", "evaluator"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_segmentation_config_instantiates(name, prepared_phantom, tmp_path):
    from monai.bundle import ConfigWorkflow

    files, workflow_type, component = CONFIGS[name]
    overrides = {
        **TINY,
        "dataset_dir": str(prepared_phantom),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "out"),
    }
    if workflow_type == "infer":
        overrides |= {"input_dir": str(prepared_phantom / "images")}
    cwd = os.getcwd()
    os.chdir(SEG_BUNDLE)
    try:
        with importable_as_scripts(SEG_BUNDLE):
            workflow = ConfigWorkflow(
                config_file=[str(SEG_BUNDLE / "configs" / f) for f in files], workflow_type=workflow_type, **overrides
            )
            known = {key for key in overrides if key in workflow.parser}
            workflow.parser.update({key: value for key, value in overrides.items() if key not in known})
            workflow.initialize()
            assert workflow.check_properties() == []
            assert workflow.parser.get_parsed_content(component) is not None
    finally:
        os.chdir(cwd)
