"""What the app writes to its output folder: the mask PNGs (`MaskWriterOperator`) and the run manifest
`predictions.json` (`RunManifest`).

`MaskWriterOperator` writes each predicted mask as an 8-bit 0/255 PNG at the source's size, records it in
`predictions.json`, and (DICOM input) forwards it as a (rows, columns) image to the SDK's DICOM SEG writer.
Each source sends it a small `record` dict (source path, output name, source size, DICOM identifiers) beside
the image; ports hold one message, so records and predictions stay paired in order. Each result in
`predictions.json` carries the seconds its image spent in reading (the source), inference (the bundle operator:
preprocessing, network, postprocessing) and writing (this operator).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
from bundle_access import bundle_image_contract
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec

logger = logging.getLogger(__name__)


def read_timing(start: float) -> dict:
    """A source's part of a record's timing: the seconds since `start` (`time.perf_counter()` before reading),
    and when the image was sent on, from which the writer counts the inference time."""
    now = time.perf_counter()
    return {"read_s": round(now - start, 4), "sent_at": now}


class RunManifest:
    """`predictions.json` in the output folder: one record per mask written, every input skipped, and the run's
    `status`: "running" while it runs, then "complete", or "failed" with the `error` (so a run that stopped
    midway never reads as "no lesions")."""

    def __init__(self, path: Path, info: dict):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data = {**info, "status": "running", "results": [], "skipped": []}
        self._write()

    @property
    def results(self) -> int:
        return len(self._data["results"])

    def finish(self, status: str, error: str | None = None) -> None:
        with self._lock:
            self._data["status"] = status
            if error:  # the start of it: a network's load error lists every tensor
                self._data["error"] = error if len(error) <= 500 else error[:500] + " ..."
            self._write()

    def skip(self, source: str, reason: str) -> None:
        logger.warning("skipped %s: %s", source, reason)
        with self._lock:
            self._data["skipped"].append({"source": source, "reason": reason})
            self._write()

    def add(self, record: dict) -> None:
        with self._lock:
            self._data["results"].append(record)
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._data, indent=2, default=str))
        os.replace(tmp, self.path)


class MaskWriterOperator(Operator):
    """Writes each predicted mask as `<output>/masks/<name>` (8-bit, 0 = background, 255 = lesion) at the
    source image's size, a NIfTI input's as NIfTI (0/1, the input's grid, affine and header), and records it in
    `predictions.json`.

    Named inputs:
        pred: the bundle operator's prediction `Image` (2D, values 0/1).
        record: the source description sent by the source operator.
    Named output (only with `emit_seg=True`):
        seg_image: the mask as a (rows, columns) uint8 0/1 `Image` for the SDK's DICOM SEG writer.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        output_folder: Path,
        manifest: RunManifest,
        emit_seg: bool = False,
        pred_port: str = "pred",
        **kwargs,
    ):
        self._out = Path(output_folder) / "masks"
        self._manifest = manifest
        self._emit_seg = emit_seg
        self.pred_port = pred_port
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(self.pred_port)
        spec.input("record")
        if self._emit_seg:
            spec.output("seg_image")

    def compute(self, op_input, op_output, context):
        from PIL import Image as PILImage

        pred = op_input.receive(self.pred_port)
        record = dict(op_input.receive("record"))
        start = time.perf_counter()
        seconds = {"read": record.pop("read_s"), "inference": round(start - record.pop("sent_at"), 4)}
        mask = pred.asnumpy() if isinstance(pred, Image) else np.asarray(pred)
        mask = np.squeeze(mask)
        if mask.ndim != 2:
            raise ValueError(f"{record['source']}: prediction has shape {mask.shape}; expected one 2D mask")
        if record["wh_order"]:
            mask = mask.T
        expected = (record["rows"], record["columns"])
        if mask.shape != expected:
            raise ValueError(
                f"{record['source']}: mask is {mask.shape} but the image is {expected} (rows, "
                "columns); the bundle's postprocessing must restore the input size (Invertd)"
            )
        values = np.unique(mask)
        if not set(values.tolist()) <= {0, 1}:
            raise ValueError(f"{record['source']}: prediction values {values[:8].tolist()} are not binary 0/1")
        binary = mask.astype(np.uint8)
        target = self._out / record["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if record["kind"] == "nifti":  # NIfTI in, NIfTI out: the input's grid (W, H), affine and header
            import nibabel as nib

            nib.save(bundle_image_contract().nifti_mask_like(record["source"], binary.T), target)
        else:
            PILImage.fromarray(binary * 255).save(target)
        record.pop("wh_order")
        seconds["write"] = round(time.perf_counter() - start, 4)
        record.update(mask=str(target), lesion=bool(binary.any()), lesion_pixels=int(binary.sum()), seconds=seconds)
        self._manifest.add(record)
        if self._emit_seg:
            op_output.emit(Image(binary, metadata={"source": record["source"]}), "seg_image")
