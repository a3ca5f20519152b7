"""Ignite handlers: learning-curve CSV files and image-grid snapshots."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence

from ignite.engine import Engine, Events

from .utils import save_grid


class CSVHistory:
    """Append one CSV row per iteration (``output_keys`` from ``engine.state.output``) or per epoch
    (``metric_keys`` from ``engine.state.metrics``) to ``filename``, with the iteration and epoch.

    A run that resumes from a checkpoint first drops the rows at or past its first step, so a killed and resumed
    training leaves exactly one row per step.
    """

    def __init__(
        self,
        filename: str,
        output_keys: Sequence[str] = (),
        metric_keys: Sequence[str] = (),
    ) -> None:
        if bool(output_keys) == bool(metric_keys):
            raise ValueError("CSVHistory: give either output_keys (per iteration) or metric_keys (per epoch)")
        self.filename = filename
        self.keys = list(output_keys or metric_keys)
        self.from_metrics = bool(metric_keys)
        self.header = ["iteration", "epoch", *self.keys]
        self.started = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.EPOCH_COMPLETED if self.from_metrics else Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.started = False

    def _start(self, step: int) -> None:
        """Keep the rows of earlier steps (column ``epoch`` or ``iteration`` below ``step``) and the header."""
        os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
        kept: list[list[str]] = []
        if os.path.isfile(self.filename):
            with open(self.filename, newline="") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] == self.header:
                column = 1 if self.from_metrics else 0
                kept = [r for r in rows[1:] if int(r[column]) < step]
        with open(self.filename, "w", newline="") as f:
            csv.writer(f).writerows([self.header, *kept])
        self.started = True

    def __call__(self, engine: Engine) -> None:
        if not self.started:
            self._start(engine.state.epoch if self.from_metrics else engine.state.iteration)
        source = engine.state.metrics if self.from_metrics else engine.state.output
        source = source[0] if isinstance(source, list) else source  # a decollated output repeats its scalars
        values = (source[k].item() if hasattr(source[k], "item") else float(source[k]) for k in self.keys)
        row = [engine.state.iteration, engine.state.epoch, *values]
        with open(self.filename, "a", newline="") as f:
            csv.writer(f).writerow(row)


class ImageGridSaver:
    """Save the first batch of an evaluator's epoch as a PNG grid: one row per entry of ``output_transform(output)``
    (for example inputs and reconstructions), ``max_images`` columns, named ``<prefix>_epoch<NNNN>.png``.
    The epoch is the evaluator's (``global_epoch`` of the trainer when run by ``ValidationHandler``).
    """

    def __init__(self, output_dir: str, prefix: str, output_transform: Callable, max_images: int = 8) -> None:
        self.output_dir, self.prefix = output_dir, prefix
        self.output_transform = output_transform
        self.max_images = max_images
        self.pending = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._arm)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _arm(self, engine: Engine) -> None:
        self.pending = True

    def __call__(self, engine: Engine) -> None:
        if not self.pending:
            return
        self.pending = False
        rows = [list(batch[: self.max_images]) for batch in self.output_transform(engine.state.output)]
        save_grid(rows, os.path.join(self.output_dir, f"{self.prefix}_epoch{engine.state.epoch:04d}.png"))
