"""Operators of the MGCC ultrasound segmentation MONAI Deploy application.

The MONAI Deploy App SDK brings the DICOM loader, series selector, bundle inference and DICOM SEG writer
operators. What it lacks for 2D ultrasound, and what lives here:

* `BundleImageReader`: reads an image with the *bundle's own* `LoadImage(d)` transform (found in the bundle's
  `preprocessing` config). `MonaiBundleInferenceOperator` drops `LoadImage*` from the bundle's
  preprocessing because its input arrives in memory; this puts exactly that loader in front of it, so the
  app's arrays are bit-for-bit what `python -m monai.bundle run` would feed the network.
* `ImageFileSourceOperator`: emits one 2D image file (PNG, JPEG, BMP) per tick.
* `DICOMInstanceSourceOperator`: takes the SDK loader's studies and the selector's ultrasound series and
  emits one single-frame DICOM instance per tick, plus a one-instance `StudySelectedSeries` for the SDK's
  `DICOMSegmentationWriterOperator`.
* `MaskWriterOperator`: writes each predicted mask as an 8-bit 0/255 PNG at the source's size, records it in
  `predictions.json`, and (DICOM input) forwards it as a (rows, columns) image to the DICOM SEG writer.

Each source also sends a small `record` dict (source path, output name, source size, DICOM identifiers)
straight to the mask writer; ports hold one message, so records and predictions stay paired in order.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from monai.deploy.core import ConditionType, Fragment, Image, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators.monai_bundle_inference_operator import get_bundle_config

logger = logging.getLogger(__name__)

#: File name suffixes read as 2D images (by the bundle's own reader; MONAI's PILReader takes these four).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Ultrasound modality, as selected from DICOM input.
US_SELECTION_RULES = json.dumps(
    {"selections": [{"name": "Ultrasound", "conditions": {"Modality": "(?i)^US$"}}]}
)


class InputError(ValueError):
    """Input the application refuses to process (the message names the file and the problem)."""


# ----------------------------------------------------------------------------------------------- bundle access


def resolve_bundle_path(model_path: str | Path) -> Path:
    """The bundle the app runs: a TorchScript `model.ts` (configs embedded by `ckpt_export`), a bundle folder
    (`configs/metadata.json` + `models/`), or a MAP model folder holding one of these (`<models>/<name>/...`).

    A bundle folder with a `models/model.ts` resolves to that file, as the SDK's own directory loader prefers
    it; the app then loads it once (the SDK operator re-instantiates a directory bundle's network for every
    image). A `model.ts` older than the folder's `models/model.pt` is refused: it would silently run stale
    weights."""
    path = Path(model_path).expanduser().resolve()
    if path.is_file():
        return path
    if not path.is_dir():
        raise InputError(f"{path}: model path does not exist")
    if not (path / "configs" / "metadata.json").is_file():
        found = sorted(path.glob("model.ts")) + sorted(path.glob("*/model.ts"))
        found += [p.parent.parent for p in sorted(path.glob("*/configs/metadata.json"))]
        if len(found) != 1:
            raise InputError(
                f"{path}: not a MONAI bundle folder (no configs/metadata.json), nor a model folder holding exactly "
                f"one model.ts or bundle (found {[str(f) for f in found]})"
            )
        path = found[0]
        if path.is_file():
            return path
    ts, pt = path / "models" / "model.ts", path / "models" / "model.pt"
    if ts.is_file():
        if pt.is_file() and pt.stat().st_mtime > ts.stat().st_mtime:
            raise InputError(f"{ts} is older than {pt}: re-export it (python -m monai.bundle ckpt_export ...) or "
                             "remove it to run the checkpoint")
        return ts
    return path


def bundle_root_of(bundle_path: Path) -> Path | None:
    """The bundle folder whose `scripts` package the configs may import: the bundle itself, or, for a
    TorchScript export at `<bundle>/models/model.ts`, that bundle."""
    root = bundle_path if bundle_path.is_dir() else bundle_path.parent.parent
    return root if (root / "scripts" / "__init__.py").is_file() else None


def read_bundle_config(bundle_path: Path, config_names: list[str]):
    """The bundle's parsed configs, read the way `MonaiBundleInferenceOperator` reads them."""
    root = bundle_root_of(bundle_path)
    if root is not None and str(root) not in sys.path:
        logger.info("bundle scripts package from %s", root)
        sys.path.insert(0, str(root))  # the bundle's own `scripts` package, as the SDK operator does for folders
    try:
        return get_bundle_config(str(bundle_path), config_names)
    except Exception as ex:
        raise InputError(f"{bundle_path}: cannot read bundle configs {config_names}: {ex}") from ex


def _flatten(compose) -> list:
    out = []
    for t in getattr(compose, "transforms", ()):
        out.extend(_flatten(t) if hasattr(t, "transforms") else [t])
    return out


def bundle_io_names(parser) -> tuple[str, str]:
    """The network input and output keys from the bundle's `network_data_format`."""
    fmt = parser["_meta_"].get("network_data_format", {})
    inputs, outputs = list(fmt.get("inputs", {})), list(fmt.get("outputs", {}))
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(
            f"bundle metadata network_data_format must name one input and one output, got {inputs} / {outputs}"
        )
    return inputs[0], outputs[0]


def check_postprocessing(parser, name: str = "postprocessing") -> list[str]:
    """Refuse, at start-up, a bundle postprocessing the SDK bundle operator cannot turn into correct masks:
    * without a discretization: the operator casts the prediction to uint8, so probabilities in [0, 1] would
      silently become an all-zero mask;
    * with a channel squeeze: the operator squeezes the channel axis itself (`np.squeeze(value, 0)`), which
      fails on an already squeezed (W, H) prediction."""
    names = [type(t).__name__ for t in _flatten(parser.get_parsed_content(name))]
    if not any("Discret" in n or "Threshold" in n for n in names):
        raise InputError(
            f"bundle `{name}` ({names}) has no AsDiscrete/threshold transform; the MONAI Deploy bundle operator "
            "casts predictions to uint8, so the masks would be wrong"
        )
    squeezes = [n for n in names if n.startswith("SqueezeDim")]
    if squeezes:
        raise InputError(
            f"bundle `{name}` ends channel-less ({squeezes} in {names}); MonaiBundleInferenceOperator squeezes "
            f"the channel itself and needs a channel-first (1, W, H) prediction: drop {squeezes[0]} from `{name}`"
        )
    return names


class BundleImageReader:
    """Reads an image file with the `LoadImage`/`LoadImaged` transform of the bundle's preprocessing."""

    def __init__(self, parser, preprocessing: str = "preprocessing", key: str = "image"):
        from monai.transforms import LoadImage, LoadImaged

        transforms = _flatten(parser.get_parsed_content(preprocessing))
        loaders = [t for t in transforms if isinstance(t, (LoadImage, LoadImaged))]
        if not loaders:
            raise InputError(
                f"bundle `{preprocessing}` has no LoadImage/LoadImaged transform; the app reads inputs with it"
            )
        self.loader = loaders[0]
        self.key = key
        self.dict_keys = list(getattr(self.loader, "keys", []))
        if isinstance(self.loader, LoadImaged) and key not in self.dict_keys:
            raise InputError(f"bundle LoadImaged keys {self.dict_keys} do not include the network input `{key}`")

    def __call__(self, path: str | Path):
        """Returns `(array, metadata, wh_order)`: the loaded array (as the bundle's loader makes it), its
        metadata dict, and whether the spatial axes are (width, height) (MONAI's PIL reader) or (height, width)."""
        from monai.data import MetaTensor
        from PIL import Image as PILImage

        try:
            with PILImage.open(path) as im:
                width, height = im.size
            if isinstance(self.dict_keys, list) and self.dict_keys:
                img = self.loader({self.key: str(path)})[self.key]
            else:
                img = self.loader(str(path))
        except Exception as ex:
            raise InputError(f"{path}: cannot read as an image: {ex}") from ex
        if not isinstance(img, MetaTensor):
            raise InputError(f"{path}: the bundle loader returned {type(img).__name__}, expected a MetaTensor")
        meta = dict(img.meta)
        spatial = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", ())).tolist())
        if spatial == (width, height):
            wh_order = True
        elif spatial == (height, width):
            wh_order = False
        else:
            raise InputError(f"{path}: loaded spatial shape {spatial} matches neither {(width, height)} nor "
                             f"{(height, width)}; only 2D images are supported")
        if width == height:  # ambiguous by shape: MONAI readers reverse indexing unless told otherwise
            reader = getattr(self.loader, "_loader", self.loader)
            readers = [r for r in getattr(reader, "readers", []) if hasattr(r, "reverse_indexing")]
            wh_order = bool(readers[-1].reverse_indexing) if readers else True
        return img.detach().cpu().numpy(), meta, wh_order


# ----------------------------------------------------------------------------------------------- run manifest


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


# ----------------------------------------------------------------------------------------------- image files


def classify_inputs(input_path: Path, exclude: Path | None = None) -> tuple[list[Path], list[Path], list[tuple[Path, str]]]:
    """Splits the input into image files, DICOM files and skipped files (with the reason), sorted by path.
    Files under `exclude` (the output folder, when it lies inside the input folder) are left out."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{input_path}: input path does not exist")
    files = [input_path] if input_path.is_file() else sorted(p for p in input_path.rglob("*") if p.is_file())
    if exclude is not None:
        files = [f for f in files if not f.resolve().is_relative_to(Path(exclude).resolve())]
    images, dicoms, skipped = [], [], []
    for f in files:
        if f.name.startswith("."):
            skipped.append((f, "hidden file"))
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            images.append(f)
        elif f.suffix.lower() == ".dcm" or _has_dicm_preamble(f):
            dicoms.append(f)
        else:
            skipped.append((f, f"not an image ({', '.join(IMAGE_SUFFIXES)}) or DICOM file"))
    return images, dicoms, skipped


def check_image_files(files: list[Path]) -> None:
    """Decode-check every image before any inference, so a broken file stops the run before masks are written."""
    from PIL import Image as PILImage

    bad = []
    for f in files:
        try:
            with PILImage.open(f) as im:
                im.verify()
        except Exception as ex:
            bad.append(f"{f} ({type(ex).__name__}: {ex})")
    if bad:
        raise InputError(f"{len(bad)} input file(s) cannot be read as images: " + "; ".join(bad[:10]))


def _has_dicm_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


class ImageFileSourceOperator(Operator):
    """Emits one image per tick, read with the bundle's own loader (schedule it with `CountCondition(n)`).

    Named outputs:
        image: an SDK `Image` holding the array and MONAI metadata, as the bundle's `LoadImage(d)` makes them.
        record: a dict describing the source (path, output name, size) for the mask writer.
    """

    def __init__(self, fragment: Fragment, *args, files: list[Path], root: Path, reader: BundleImageReader,
                 image_port: str = "image", **kwargs):
        self._files = [Path(f) for f in files]
        self._root = Path(root)
        self._reader = reader
        self._index = 0
        self.image_port = image_port
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output(self.image_port)
        spec.output("record")

    def compute(self, op_input, op_output, context):
        if self._index >= len(self._files):
            raise RuntimeError(f"{self.name}: scheduled more often than there are input files ({len(self._files)})")
        path = self._files[self._index]
        self._index += 1
        array, meta, wh_order = self._reader(path)
        rel = path.name if self._root.is_file() else str(path.relative_to(self._root))
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            width, height = im.size
        record = {"source": str(path), "name": str(Path(rel).with_suffix(".png")), "rows": height,
                  "columns": width, "wh_order": wh_order, "kind": "image"}
        op_output.emit(Image(array, metadata=meta), self.image_port)
        op_output.emit(record, "record")


# ----------------------------------------------------------------------------------------------- DICOM


def dicom_to_pixels(ds, source: str) -> np.ndarray:
    """The displayable pixels of a single-frame DICOM image: (rows, columns) grayscale or (rows, columns, 3) RGB."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"{source}: DICOM instance {ds.get('SOPInstanceUID', '?')} has no Pixel Data "
                         "(7FE0,0010); nothing to segment")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InputError(f"{source}: multi-frame DICOM ({frames} frames); the model segments single 2D frames")
    try:
        arr = ds.pixel_array  # pydicom 3 returns YBR_* colour data as RGB (as_rgb=True by default)
    except Exception as ex:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise InputError(f"{source}: cannot decode pixel data (transfer syntax {syntax}): {ex}") from ex
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    elif photometric == "MONOCHROME1":  # 0 is white: invert so brighter means more echo, as in MONOCHROME2
        arr = np.iinfo(arr.dtype).max - arr if arr.dtype.kind == "u" else arr.max() - arr
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise InputError(f"{source}: unsupported pixel array shape {arr.shape}")
    if arr.dtype.kind == "i":
        if arr.min() < 0:
            raise InputError(f"{source}: signed pixel values below 0 are not supported for ultrasound")
        arr = arr.astype(np.uint16 if arr.max() > 255 else np.uint8)
    if arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{source}: unsupported pixel data type {arr.dtype}")
    if arr.ndim == 3 and arr.dtype != np.uint8:
        raise InputError(f"{source}: colour images must be 8 bits per sample")
    return arr


class DICOMInstanceSourceOperator(Operator):
    """Emits one single-frame ultrasound DICOM instance per tick.

    Named inputs:
        dicom_study_list: all studies, from the SDK's `DICOMDataLoaderOperator` (to report what was not selected).
        study_selected_series_list: ultrasound series, from the SDK's `DICOMSeriesSelectorOperator`.
    Named outputs:
        image: the instance's pixels as the bundle's own `LoadImage(d)` reads them (via a lossless PNG in a
            private temporary folder, deleted at once), with MONAI metadata.
        study_selected_series_list: the instance alone, as a `StudySelectedSeries` list for the DICOM SEG writer.
        record: identifiers (patient, study, series, SOP instance UIDs, file) for the mask writer.

    Every selected instance is checked before the first one is emitted: an instance without pixel data or
    with an undecodable one stops the run with an error naming the file; multi-frame instances (cine loops)
    are skipped and listed in `predictions.json`; nothing to segment at all is an error.
    """

    def __init__(self, fragment: Fragment, *args, reader: BundleImageReader, manifest: RunManifest,
                 input_root: Path, dicom_files: list[Path] = (), image_port: str = "image", **kwargs):
        from holoscan.conditions import BooleanCondition

        self._dicom_files = [Path(f).resolve() for f in dicom_files]
        self._reader = reader
        self._manifest = manifest
        self._root = Path(input_root)
        self.image_port = image_port
        self._studies = None
        self._selected = None
        self._queue: list | None = None
        self._stop_name = "dicom_instances_left"
        super().__init__(fragment, BooleanCondition(fragment, enable_tick=True, name=self._stop_name),
                         *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("dicom_study_list").condition(ConditionType.NONE)
        spec.input("study_selected_series_list").condition(ConditionType.NONE)
        spec.output(self.image_port)
        spec.output("study_selected_series_list")
        spec.output("record")

    def compute(self, op_input, op_output, context):
        if self._queue is None:
            studies = op_input.receive("dicom_study_list")
            if studies is not None:
                self._studies = studies
            selected = op_input.receive("study_selected_series_list")
            if selected is not None:
                self._selected = selected
            if self._studies is None or self._selected is None:
                return  # upstream operators have not run yet
            self._queue = self._plan()
        if not self._queue:
            self.conditions[self._stop_name].disable_tick()
            return
        study, series, sop = self._queue.pop(0)
        ds = sop.get_native_sop_instance()
        source = str(getattr(ds, "filename", "") or ds.SOPInstanceUID)
        pixels = dicom_to_pixels(ds, source)
        array, meta, wh_order = self._read_through_bundle_loader(pixels, source)
        meta["filename_or_obj"] = source

        one = DICOMSeries(series.SeriesInstanceUID)
        for attr in ("SeriesDate", "SeriesTime", "Modality", "SeriesDescription", "BodyPartExamined",
                     "SeriesNumber", "Laterality", "PatientPosition"):
            try:
                setattr(one, attr, getattr(series, attr))
            except Exception:  # attribute not set on the source series
                pass
        one.add_sop_instance(ds)
        study_selection = StudySelectedSeries(study)
        study_selection.add_selected_series(SelectedSeries("Ultrasound", one))

        record = {"source": source, "name": f"{ds.SOPInstanceUID}.png", "rows": int(ds.Rows),
                  "columns": int(ds.Columns), "wh_order": wh_order, "kind": "dicom",
                  "PatientID": str(ds.get("PatientID", "")), "StudyInstanceUID": str(ds.StudyInstanceUID),
                  "SeriesInstanceUID": str(ds.SeriesInstanceUID), "SOPInstanceUID": str(ds.SOPInstanceUID)}
        op_output.emit(Image(array, metadata=meta), self.image_port)
        op_output.emit([study_selection], "study_selected_series_list")
        op_output.emit(record, "record")
        if not self._queue:
            self.conditions[self._stop_name].disable_tick()

    def _plan(self) -> list:
        """All selected single-frame instances, sorted; everything else recorded as skipped or refused."""
        selected_uids = set()
        queue = []
        for study_selection in self._selected or []:
            for selection in study_selection.selected_series:
                series = selection.series
                selected_uids.add(series.SeriesInstanceUID)
                for sop in series.get_sop_instances():
                    ds = sop.get_native_sop_instance()
                    source = str(getattr(ds, "filename", "") or ds.SOPInstanceUID)
                    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
                        raise InputError(f"{source}: DICOM instance {ds.SOPInstanceUID} has no Pixel Data "
                                         "(7FE0,0010); nothing to segment")
                    frames = int(ds.get("NumberOfFrames", 1) or 1)
                    if frames != 1:
                        self._manifest.skip(source, f"multi-frame DICOM ({frames} frames); the model segments "
                                                    "single 2D frames: export single frames to segment them")
                        continue
                    queue.append((study_selection.study, series, sop, source))
        for study in self._studies or []:
            for series in study.get_all_series():
                if series.SeriesInstanceUID in selected_uids:
                    continue
                for sop in series.get_sop_instances():
                    ds = sop.get_native_sop_instance()
                    self._manifest.skip(str(getattr(ds, "filename", "") or ds.SOPInstanceUID),
                                        f"modality {ds.get('Modality', '?')} is not US (ultrasound)")
        loaded = {Path(str(getattr(sop.get_native_sop_instance(), "filename", ""))).resolve()
                  for study in self._studies or [] for series in study.get_all_series()
                  for sop in series.get_sop_instances()}
        for path in self._dicom_files:
            if path not in loaded:
                self._manifest.skip(str(path), "not loaded by the SDK's DICOM loader (not valid DICOM, or no "
                                               "Study/Series/SOP Instance UID: see the log)")
        if not queue:
            raise InputError(f"{self._root}: no single-frame ultrasound (Modality US) DICOM image to segment "
                             f"(see {self._manifest.path} for skipped files)")
        queue.sort(key=lambda item: item[3])
        return [item[:3] for item in queue]

    def _read_through_bundle_loader(self, pixels: np.ndarray, source: str):
        from PIL import Image as PILImage

        with tempfile.TemporaryDirectory(prefix="mgcc_dicom_") as tmp:
            png = Path(tmp) / "frame.png"
            PILImage.fromarray(pixels).save(png)  # PNG is lossless for 8/16-bit gray and 8-bit RGB(A)
            try:
                return self._reader(png)
            except InputError as ex:
                raise InputError(f"{source}: {ex}") from ex


# ----------------------------------------------------------------------------------------------- masks


class MaskWriterOperator(Operator):
    """Writes each predicted mask as `<output>/masks/<name>` (8-bit, 0 = background, 255 = lesion) at the
    source image's size, and records it in `predictions.json`.

    Named inputs:
        pred: the bundle operator's prediction `Image` (2D, values 0/1).
        record: the source description sent by the source operator.
    Named output (only with `emit_seg=True`):
        seg_image: the mask as a (rows, columns) uint8 0/1 `Image` for the SDK's DICOM SEG writer.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, manifest: RunManifest,
                 emit_seg: bool = False, pred_port: str = "pred", **kwargs):
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
        mask = pred.asnumpy() if isinstance(pred, Image) else np.asarray(pred)
        mask = np.squeeze(mask)
        if mask.ndim != 2:
            raise ValueError(f"{record['source']}: prediction has shape {mask.shape}; expected one 2D mask")
        if record["wh_order"]:
            mask = mask.T
        expected = (record["rows"], record["columns"])
        if mask.shape != expected:
            raise ValueError(f"{record['source']}: mask is {mask.shape} but the image is {expected} (rows, "
                             "columns); the bundle's postprocessing must restore the input size (Invertd)")
        values = np.unique(mask)
        if not set(values.tolist()) <= {0, 1}:
            raise ValueError(f"{record['source']}: prediction values {values[:8].tolist()} are not binary 0/1")
        binary = mask.astype(np.uint8)
        target = self._out / record["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(binary * 255).save(target)
        record.pop("wh_order")
        record.update(mask=str(target), lesion_pixels=int(binary.sum()))
        self._manifest.add(record)
        if self._emit_seg:
            op_output.emit(Image(binary, metadata={"source": record["source"]}), "seg_image")
