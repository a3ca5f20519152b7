# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Config values that need a check or a side effect: booleans from the command line, the compilation cache."""

from __future__ import annotations

import os

__all__ = ["flag", "use_compile_cache"]


def flag(value: bool | str | int, name: str) -> bool:
    """A boolean config value. ``python -m monai.bundle run --amp false`` passes the string ``'false'``, which
    Python reads as true: strings "true"/"false"/"1"/"0" are read as meant, anything else is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"config key '{name}' must be true or false, got {value!r}")


def use_compile_cache(folder: str) -> str:
    """Keep TorchInductor's on-disk caches (FX graphs, generated kernels) in ``folder`` (``TORCHINDUCTOR_CACHE_DIR``),
    so a resumed or repeated ``compile`` run that uses the same folder loads the compiled code instead of compiling
    again. Returns the absolute folder."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder
