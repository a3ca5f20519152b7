"""How to read a raw dataset: `mgcc prepare`'s data options as one frozen record, built and checked once.

The command line (`mgcc prepare`, and `mgcc run/compare/evaluate --data DIR`) gives them as a dict of option names
(`images`, `masks`, ...); `DataOptions.from_options` refuses unknown names and bad values with one `DatasetError`
line naming the option, and `prepare_dataset` takes the record. The run's own settings (labeled fraction, seed,
normal images, near-copy threshold) are not data options: they say how to split, not how to read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mgcc.data.records import DatasetError, Problem

LAYOUTS = ("auto", "busi", "folders")


def option_error(option: str, reason: str) -> DatasetError:
    return DatasetError([Problem(option, reason)])


def mask_threshold_option(value: object) -> float | None:
    """`--mask-threshold` as a float in (0, 255] (a mask pixel value, 16-bit masks scaled to 0..255), or None."""
    if value is None:
        return None
    accepted = "a mask pixel value in (0, 255]"
    example = "such as 128 (16-bit masks are scaled to 0..255 first)"
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        threshold = float(str(value).strip())
    except ValueError:
        raise option_error("--mask-threshold", f"'{value}' is not {accepted} {example}") from None
    if not 0 < threshold <= 255:
        raise option_error("--mask-threshold", f"{value} is outside (0, 255]: give a mask pixel value {example}")
    return threshold


@dataclass(frozen=True)
class DataOptions:
    """`mgcc prepare`'s options for a raw dataset (the field names are the options' names, `--image-pattern` is
    `image_pattern`).

    layout: `auto` (BUSI class folders, or an images and a masks folder), `busi` or `folders`.
    images, masks: the generic layout's folders (relative to the dataset; default `images` and `masks`, any
        capitalisation; masks in one subfolder of `masks`, as the MGCC reference code's `masks/0`, are found).
    image_pattern, mask_pattern: file names with one `{id}` and optional `*` (default `{id}.png` both).
    classes: a class CSV (a relative path is read from the current folder), with the columns `id_column`,
        `class_column` and, optionally, `group_column` (images of one group stay on one side of every split).
    mask_threshold: masks with more than one non-zero value are lesion where >= this (0..255); default half
        their maximum.
    """

    layout: str = "auto"
    images: str | None = None
    masks: str | None = None
    image_pattern: str | None = None
    mask_pattern: str | None = None
    classes: str | None = None
    id_column: str = "image"
    class_column: str = "class"
    group_column: str | None = None
    mask_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise option_error("--layout", f"unknown layout '{self.layout}' (expected one of: {', '.join(LAYOUTS)})")
        for name in ("images", "masks", "image_pattern", "mask_pattern", "classes", "group_column"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))  # a Path, or a number the command line parsed
        object.__setattr__(self, "id_column", str(self.id_column))
        object.__setattr__(self, "class_column", str(self.class_column))
        object.__setattr__(self, "mask_threshold", mask_threshold_option(self.mask_threshold))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> DataOptions:
        """The record of a dict of option names (None values left at their defaults); unknown names are refused
        in one line that lists the options."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise option_error(
                ", ".join("--" + name for name in unknown),
                f"unknown data option(s) (options: {', '.join('--' + name for name in cls.names())})",
            )
        return cls(**{key: value for key, value in options.items() if value is not None})

    def folder_options(self) -> bool:
        """Whether any option of the generic layout is given (then `auto` means that layout)."""
        return any(
            value is not None
            for value in (self.images, self.masks, self.image_pattern, self.mask_pattern, self.classes)
        )

    def given(self) -> dict[str, Any]:
        """The options that differ from their defaults, by name (what a user passed)."""
        return {
            field.name: getattr(self, field.name)
            for field in fields(self)
            if getattr(self, field.name) != field.default
        }
