"""Helpers for the LDM bundle tests (no tests here): tiny CPU settings, in-process bundle runs, subprocess runs.

The bundle's configs import its own top-level ``scripts`` package, as every MONAI bundle's do; the segmentation bundle
has one too. In-process runs use ``mgcc.bundles.importable_as_scripts``, so the two never see each other's package
in one pytest process (tests that only call into the package use ``mgcc.bundles.import_bundle_scripts``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mgcc.bundles import importable_as_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_ldm_generation"
CONFIGS = BUNDLE / "configs"
AE = str(CONFIGS / "train_autoencoder.json")
DIFF = str(CONFIGS / "train_diffusion.json")
INFER = str(CONFIGS / "inference.json")
EVAL = str(CONFIGS / "evaluate.json")

#: networks small enough for a few seconds of CPU training at 32x32 (the same keys work at paper scale)
TINY = {
    "spatial_size": [32, 32],
    "latent_channels": 2,
    "ae_channels": [8, 16],
    "ae_norm_num_groups": 8,
    "ae_nonlocal_attn": False,
    "disc_channels": 8,
    "disc_num_layers": 2,
    "dm_channels": [16, 32],
    "dm_attention_levels": [False, True],
    "dm_num_head_channels": [0, 16],
    "dm_num_res_blocks": 1,
    "dm_norm_num_groups": 8,
    "batch_size": 4,
    "amp": False,  # float32 on every CPU kind (tests/test_ldm_amp.py covers bfloat16)
}


def run_bundle(config_files: list[str], workflow_type: str = "train", **overrides):
    """Run a bundle config in this process (from the bundle folder, as ``python -m monai.bundle run`` would)."""
    from monai.bundle import ConfigWorkflow

    cwd = os.getcwd()
    os.chdir(BUNDLE)
    try:
        with importable_as_scripts(BUNDLE):
            workflow = ConfigWorkflow(
                config_file=config_files,
                meta_file=str(CONFIGS / "metadata.json"),
                logging_file=str(CONFIGS / "logging.conf"),
                workflow_type=workflow_type,
                **overrides,
            )
            workflow.initialize()
            workflow.run()
            workflow.finalize()
    finally:
        os.chdir(cwd)
    return workflow


def parse_bundle(
    config_files: list[str],
    workflow_type: str = "infer",
    keys: tuple[str, ...] = ("inferer", "network", "prepare_batch", "dataset"),
    **overrides,
):
    """The parsed components ``keys`` of a bundle config (nothing run):
    ``parse_bundle(...).parser.get_parsed_content(id)``."""
    from monai.bundle import ConfigWorkflow

    cwd = os.getcwd()
    os.chdir(BUNDLE)
    try:
        with importable_as_scripts(BUNDLE):
            workflow = ConfigWorkflow(config_file=config_files, workflow_type=workflow_type, **overrides)
            workflow.initialize()
            for key in keys:
                workflow.parser.get_parsed_content(key)
    finally:
        os.chdir(cwd)
    return workflow


def cli_args(config_files: list[str], **overrides) -> list[str]:
    """``python -m monai.bundle run`` command line for the given configs and overrides."""
    config = config_files[0] if len(config_files) == 1 else repr(config_files)
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config]
    for key, value in overrides.items():
        args += [f"--{key}", repr(value) if isinstance(value, (list, bool)) else str(value)]
    return args


def run_cli(config_files: list[str], timeout: float = 300, **overrides) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_args(config_files, **overrides), cwd=BUNDLE, capture_output=True, text=True, timeout=timeout
    )
