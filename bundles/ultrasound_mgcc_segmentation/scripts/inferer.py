# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Mixed precision for every forward pass of the bundle (training, validation, inference), on CPU as on CUDA."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from monai.inferers import Inferer

from .config import flag

__all__ = ["AutocastInferer"]


class AutocastInferer(Inferer):
    """``network(inputs)`` under ``torch.autocast`` on ``device``'s type, with float32 outputs.

    MONAI's engines autocast on CUDA only (``amp``); this inferer also does it on CPU, where bfloat16 convolutions
    run on AVX-512 BF16 / AMX units (on CPUs without them it is slower than float32, and says so). Losses and
    post-processing then see float32 tensors.

    Args:
        enabled: autocast on or off (``"true"``/``"false"`` strings from the command line are accepted).
        device: where the network runs; picks the default ``dtype``.
        dtype: ``None``: bfloat16 on CPU, float16 on CUDA (which needs a gradient scaler to train:
            ``needs_grad_scaler``).
        channels_last: pass 4D inputs as NHWC (``torch.channels_last``); the network must be converted alike.
    """

    def __init__(
        self,
        enabled: bool | str = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        channels_last: bool | str = False,
    ) -> None:
        super().__init__()
        self.enabled = flag(enabled, "amp")
        self.device_type = torch.device(device).type
        self.dtype = dtype or (torch.bfloat16 if self.device_type == "cpu" else torch.float16)
        self.memory_format = torch.channels_last if flag(channels_last, "channels_last") else torch.contiguous_format
        if self.enabled and self.device_type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            warnings.warn(
                "amp on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): oneDNN cannot run bfloat16 "
                "convolutions here, so they fall back to slow reference kernels (several times slower than float32)"
            )

    @property
    def needs_grad_scaler(self) -> bool:
        """Whether training under this inferer needs gradient scaling (float16 only)."""
        return self.enabled and self.dtype == torch.float16

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled):
            outputs = network(inputs, *args, **kwargs)
        if isinstance(outputs, (tuple, list)):
            return type(outputs)(o.float() for o in outputs)
        return outputs.float()
