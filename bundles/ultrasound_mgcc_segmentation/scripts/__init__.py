# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Code of the ultrasound_mgcc_segmentation bundle (imported by the configs as ``scripts``)."""

from . import (
    config,
    data,
    handlers,
    image_contract,
    inferer,
    losses,
    network,
    onnx_network,
    postprocessing,
    score,
    trainer,
    transforms,
)

__all__ = [
    "config",
    "data",
    "handlers",
    "image_contract",
    "inferer",
    "losses",
    "network",
    "onnx_network",
    "postprocessing",
    "score",
    "trainer",
    "transforms",
]
