# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Mixed precision for every forward pass of the bundle (training, validation, inference), on CPU as on CUDA,
chosen by the machine unless the config says otherwise (``amp: "auto"``, the default)."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer

from .config import flag

__all__ = ["AutocastInferer", "cpu_has_native_bfloat16", "resolve_precision"]

logger = logging.getLogger(__name__)

#: /proc/cpuinfo flags of x86 CPUs with bfloat16 arithmetic in hardware (AVX-512 BF16, AMX, AVX-NE-CONVERT)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")
#: environment switch that overrides the CPU check: ``1`` makes ``auto`` act as on a CPU with bfloat16 in hardware
#: (on other CPUs oneDNN's reference kernels then give the same rounding, only slower), ``0`` as on one without
CPU_BF16_ENV = "MGCC_CPU_BFLOAT16"


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo``; None where it cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 convolutions fast: oneDNN takes bfloat16 here and, where the CPU lists its
    x86 feature flags, one of ``BF16_CPU_FLAGS`` is among them (oneDNN also accepts plain AVX-512, where it
    emulates bfloat16 more slowly than float32). Checked once per process. ``MGCC_CPU_BFLOAT16=1`` or ``0`` in the
    environment overrides the check, to reproduce either kind of machine on the other."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"environment variable {CPU_BF16_ENV} must be 1 or 0, got {forced!r}")
        return forced == "1"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    flags = _cpu_flags()
    return not flags or any(f in flags for f in BF16_CPU_FLAGS)  # no flags listed (not Linux, ARM): oneDNN's word


def _auto_or_flag(value: bool | str | int, name: str) -> bool | None:
    """``None`` for ``"auto"``, else the boolean (``flag``'s rules, with ``auto`` added to its error)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        return flag(value, name)
    except ValueError:
        raise ValueError(f"config key '{name}' must be true, false or auto, got {value!r}") from None


def resolve_precision(amp: bool | str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or ``None`` for float32.

    ``auto``: bfloat16 on a CPU with bfloat16 in hardware (``cpu_has_native_bfloat16``), float32 on other CPUs
    (where bfloat16 is several times slower); on CUDA bfloat16 where the GPU supports it, else float16.
    ``true``: bfloat16 on CPU (with a warning where it is slow), on CUDA as for ``auto``. ``false``: float32."""
    wanted = _auto_or_flag(amp, "amp")
    device_type = torch.device(device).type
    if wanted is False:
        return None
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    if wanted is None and not cpu_has_native_bfloat16():
        return None
    if not cpu_has_native_bfloat16():
        warnings.warn(
            "amp on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): oneDNN cannot run bfloat16 "
            "convolutions fast here (several times slower than float32); `amp: auto` would choose float32",
            stacklevel=2,
        )
    return torch.bfloat16


class AutocastInferer(Inferer):
    """``network(inputs)`` under ``torch.autocast`` on ``device``'s type, with float32 outputs.

    MONAI's engines autocast on CUDA only (``amp``); this inferer also does it on CPU, where bfloat16 convolutions
    run on AVX-512 BF16 / AMX units. Losses and post-processing then see float32 tensors.

    Args:
        enabled: ``"auto"`` (default: by the machine, see ``resolve_precision``), true or false (``"true"`` /
            ``"false"`` strings from the command line are accepted).
        device: where the network runs.
        dtype: force this autocast dtype when enabled (default: ``resolve_precision``'s choice).
        channels_last: pass 4D inputs as NHWC (``torch.channels_last``; the network must be converted alike, by
            ``memory_format``); ``"auto"``: where it was measured to pay, on CUDA and with bfloat16 on CPU.
    """

    def __init__(
        self,
        enabled: bool | str = "auto",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.device_type = torch.device(device).type
        resolved = resolve_precision(enabled, device)
        self.enabled = resolved is not None
        self.dtype = (dtype or resolved) if self.enabled else torch.float32
        nhwc = _auto_or_flag(channels_last, "channels_last")
        if nhwc is None:
            nhwc = self.device_type == "cuda" or self.enabled
        self.memory_format = torch.channels_last if nhwc else torch.contiguous_format
        logger.info(f"precision: {self.precision}")

    @property
    def precision(self) -> str:
        """What runs, in words: ``"bfloat16 autocast, channels-last"``, ``"float32"``, ..."""
        name = str(self.dtype).replace("torch.", "") + (" autocast" if self.enabled else "")
        return name + (", channels-last" if self.memory_format == torch.channels_last else "")

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
