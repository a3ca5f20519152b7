# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""Ignite handlers that write the bundle's machine-readable outputs.

* ``TrainingHistory``: ``training_history.csv``, one row per training iteration and one per validation.
* ``EvaluationReport``: ``per_image.csv``, ``summary.json`` and overlay figures of an evaluation run.
* ``PredictionsManifest``: ``predictions.json`` of an inference run, saying per image whether a lesion was found.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from .data import mask_name

__all__ = [
    "TrainingHistory",
    "EvaluationReport",
    "PredictionsManifest",
    "HISTORY_COLUMNS",
    "TRAINING_COLUMNS",
    "detection_metrics",
]

#: what the trainer reports per iteration (its output keys; also the logged scalars of ``train.json``)
TRAINING_COLUMNS = ("loss", "supervised_loss", "consistency_loss", "consistency_weight", "lr")
HISTORY_COLUMNS = ("iteration", *TRAINING_COLUMNS, "val_dice")


class TrainingHistory:
    """Learning curve as CSV with columns ``HISTORY_COLUMNS``: training rows fill ``TRAINING_COLUMNS`` (the lr
    used at that iteration) and leave ``val_dice`` empty; validation rows fill only ``iteration`` and ``val_dice``.

    On a resumed run the rows after the restored iteration are dropped before appending, so the file always
    describes one consistent run (done at the first iteration, after any ``CheckpointLoader`` has run).

    Args:
        filepath: the CSV file to write.
        validator: the validation engine (its ``COMPLETED`` event adds a row).
        metric_name: the validation metric to record.
    """

    def __init__(self, filepath: str, validator: Engine | None = None, metric_name: str = "val_mean_dice") -> None:
        self.filepath = filepath
        self.validator = validator
        self.metric_name = metric_name
        self.trainer: Engine | None = None
        self._started = False

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self._validation)

    def _reset(self, _: Engine) -> None:
        self._started = False

    def _start(self, first_iteration: int) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.filepath)), exist_ok=True)
        kept: list[list[str]] = []
        if first_iteration > 1 and os.path.isfile(self.filepath):
            with open(self.filepath, newline="") as f:
                kept = [r for r in list(csv.reader(f))[1:] if int(r[0]) < first_iteration]
        with open(self.filepath, "w", newline="") as f:
            csv.writer(f).writerows([HISTORY_COLUMNS, *kept])

    def _append(self, row: dict) -> None:
        with open(self.filepath, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in HISTORY_COLUMNS])

    def _iteration(self, engine: Engine) -> None:
        if not self._started:
            self._start(engine.state.iteration)
            self._started = True
        out = engine.state.output
        row = {c: float(out[c]) for c in TRAINING_COLUMNS}
        self._append({"iteration": engine.state.iteration, **row})

    def _validation(self, validator: Engine) -> None:
        self._append({"iteration": self.trainer.state.iteration, "val_dice": validator.state.metrics[self.metric_name]})


def detection_metrics(rows: list[dict]) -> dict:
    """Lesion images and lesion-free images apart, from per-image rows (``dice``, ``label_pixels``,
    ``pred_pixels``, ``overlap_pixels``): Dice and sensitivity (the prediction overlaps the truth) on images with
    a lesion; specificity (the prediction is empty) on images without. ``None`` where a group has no image."""
    lesion = [r for r in rows if r["label_pixels"] > 0]
    free = [r for r in rows if r["label_pixels"] == 0]
    dice = np.asarray([r["dice"] for r in lesion], dtype=np.float64)
    return {
        "lesion_images": {
            "n": len(lesion),
            "dice": {"mean": float(dice.mean()), "std": float(dice.std())} if lesion else None,
            "sensitivity": float(np.mean([r["overlap_pixels"] > 0 for r in lesion])) if lesion else None,
        },
        "lesion_free_images": {
            "n": len(free),
            "specificity": float(np.mean([r["pred_pixels"] == 0 for r in free])) if free else None,
        },
    }


class EvaluationReport:
    """Per-image metrics table, summary and overlay figures of an evaluation run.

    Reads the per-image values that MONAI's metric handlers keep with ``save_details=True``
    (``engine.state.metric_details``) and the evaluator's post-processed outputs. HD95 follows the
    project's empty-mask rule: 0 when prediction and ground truth are both empty, the evaluated image's
    diagonal (the largest possible distance) when exactly one of them is empty. Dice and IoU get the same
    rule from the metrics (``ignore_empty=False``: both empty scores 1, otherwise 0).

    Writes into ``output_dir``: ``per_image.csv`` (image, class, dice, iou, hd95, label_pixels, pred_pixels,
    overlap_pixels), ``summary.json`` (n, mean and std of each metric over all images, and ``detection_metrics``:
    Dice and sensitivity on lesion images, specificity on lesion-free ones) and ``overlay_{best,median,worst}.png``.

    Args:
        output_dir: folder for the results.
        metric_names: metric keys of ``engine.state.metric_details`` as ``{"dice": ..., "iou": ..., "hd95": ...}``.
        classes: optional ``{image path: class}`` to add a class column (e.g. from the datalist).
    """

    def __init__(self, output_dir: str, metric_names: dict[str, str], classes: dict[str, str] | None = None) -> None:
        self.output_dir = output_dir
        self.metric_names = metric_names
        self.classes = classes or {}
        self.records: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.records.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    @staticmethod
    def _plane(x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()[0].T  # channel 0; MONAI's 2D (W, H) order back to (H, W) rows

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, Sequence) else [outputs]:
            name = str(item["image"].meta["filename_or_obj"])
            self.records.append(
                {
                    "image_path": name,
                    "image": self._plane(item["image"]).astype(np.float32),
                    "label": self._plane(item["label"]) > 0.5,
                    "pred": self._plane(item["pred"]) > 0.5,
                }
            )

    def _write(self, engine: Engine) -> None:
        details = {}
        for key, metric in self.metric_names.items():
            values = engine.state.metric_details[metric].detach().cpu().reshape(-1).tolist()
            if len(values) != len(self.records):
                raise RuntimeError(f"{metric}: {len(values)} values for {len(self.records)} images.")
            details[key] = values
        rows = []
        for i, rec in enumerate(self.records):
            label_px, pred_px = int(rec["label"].sum()), int(rec["pred"].sum())
            hd95 = details["hd95"][i]
            if label_px == 0 or pred_px == 0:
                hd95 = 0.0 if label_px == pred_px else float(math.hypot(*rec["label"].shape))
            rows.append(
                {
                    "image": os.path.basename(rec["image_path"]),
                    "class": self.classes.get(rec["image_path"], ""),
                    "dice": details["dice"][i],
                    "iou": details["iou"][i],
                    "hd95": hd95,
                    "label_pixels": label_px,
                    "pred_pixels": pred_px,
                    "overlap_pixels": int((rec["label"] & rec["pred"]).sum()),
                }
            )
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "per_image.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        summary: dict = {"n": len(rows)}
        for key in ("dice", "iou", "hd95"):
            values = np.asarray([r[key] for r in rows], dtype=np.float64)
            summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
        summary.update(detection_metrics(rows))
        summary["rules"] = {
            "threshold": "sigmoid >= 0.5",
            "empty_masks": "dice/iou: both empty = 1, one empty = 0; hd95: both empty = 0, one empty = image diagonal",
            "hd95_units": "pixels of the evaluated (resized) image",
            "sensitivity": "share of lesion images whose prediction overlaps the ground truth",
            "specificity": "share of lesion-free images (empty ground truth) whose prediction is empty",
        }
        with open(os.path.join(self.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        self._overlays(rows)
        engine.logger.info(f"evaluation of {len(rows)} images written to {self.output_dir}: {summary}")

    def _overlays(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        order = np.argsort([r["dice"] for r in rows], kind="stable")
        for tag, index in (("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])):
            rec, row = self.records[index], rows[index]
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.imshow(rec["image"], cmap="gray")
            if rec["label"].any():
                ax.contour(rec["label"], levels=[0.5], colors="lime", linewidths=1.5)
            if rec["pred"].any():
                ax.contour(rec["pred"], levels=[0.5], colors="red", linewidths=1.5, linestyles="--")
            ax.set_title(
                f"{tag}: {row['image']}  Dice {row['dice']:.3f}\ngreen = ground truth, red = prediction", fontsize=8
            )
            ax.axis("off")
            fig.tight_layout()
            fig.savefig(os.path.join(self.output_dir, f"overlay_{tag}.png"), dpi=100)
            plt.close(fig)


class PredictionsManifest:
    """``<output_dir>/predictions.json``: per image its mask file, the mask's lesion pixels and ``"lesion"`` (false:
    no lesion found, the mask is empty), so "no lesion" is an answer a script can read, not a black image to open.
    The log says how many images had none.

    Args:
        output_dir: the folder the masks are written to.
        output_postfix, output_ext: the mask file names, as the mask writer (``SaveImaged``) makes them.
    """

    def __init__(self, output_dir: str, output_postfix: str = "seg", output_ext: str = ".png") -> None:
        self.output_dir, self.suffix = output_dir, f"_{output_postfix}{output_ext}"
        self.results: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.results.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, Sequence) else [outputs]:
            source = str(item["image"].meta["filename_or_obj"])
            pixels = int((item["pred"] > 0).sum())
            self.results.append(
                {"image": source, "mask": mask_name(source, self.suffix), "lesion": pixels > 0, "lesion_pixels": pixels}
            )

    def _write(self, engine: Engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        empty = sum(not r["lesion"] for r in self.results)
        with open(os.path.join(self.output_dir, "predictions.json"), "w") as f:
            json.dump({"images": len(self.results), "no_lesion": empty, "results": self.results}, f, indent=2)
        engine.logger.info(
            f"{len(self.results)} masks written to {self.output_dir}; no lesion found in {empty} of "
            "them (empty masks; predictions.json lists each image)"
        )
