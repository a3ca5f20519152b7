"""The app's inputs: sorting the input folder into image and DICOM files, checking them, and the source
operators that feed them, one per tick, to the bundle operator.

* `ImageFileSourceOperator`: emits one 2D image file (PNG, JPEG, BMP, one-slice NIfTI) per tick.
* `DICOMInstanceSourceOperator`: takes the SDK loader's studies and the selector's ultrasound series and
  emits one single-frame DICOM instance per tick, plus a one-instance `StudySelectedSeries` for the SDK's
  `DICOMSegmentationWriterOperator`.

Both read the pixels with the bundle's own loader (`bundle_access.BundleImageReader`) and send a small `record`
dict (source path, output name, source size, DICOM identifiers) straight to the mask writer.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bundle_access import BundleImageReader, bundle_image_contract
from errors import InputError
from monai.deploy.core import ConditionType, Fragment, Image, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from pydicom.misc import is_dicom
from writers import RunManifest, read_timing

#: File name suffixes read as 2D images by the bundle's own reader (its image contract's); any case.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz")
#: Ultrasound modality, as selected from DICOM input.
US_SELECTION_RULES = json.dumps({"selections": [{"name": "Ultrasound", "conditions": {"Modality": "(?i)^US$"}}]})


# ----------------------------------------------------------------------------------------------- input folder


def classify_inputs(
    input_path: Path, exclude: Path | None = None
) -> tuple[list[Path], list[Path], list[tuple[Path, str]]]:
    """Splits the input into image files, DICOM files and skipped files (with the reason), sorted by path.
    Files under `exclude` (the output folder, when it lies inside the input folder) are left out."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{input_path}: input path does not exist")
    files = (
        [input_path]
        if input_path.is_file()
        else sorted(p for p in input_path.rglob("*") if p.is_file() or p.is_symlink())
    )
    if exclude is not None:
        files = [f for f in files if not f.resolve().is_relative_to(Path(exclude).resolve())]
    images, dicoms, skipped = [], [], []
    for f in files:
        if f.name.startswith("."):
            skipped.append((f, "hidden file"))
        elif f.name.lower().endswith(IMAGE_SUFFIXES):
            images.append(f)
        elif f.suffix.lower() == ".dcm" or _is_dicom_file(f):
            dicoms.append(f)
        else:
            skipped.append((f, f"not an image ({', '.join(IMAGE_SUFFIXES)}) or DICOM file"))
    return images, dicoms, skipped


def _is_dicom_file(path: Path) -> bool:
    """Whether the file has the DICOM preamble ('DICM' after 128 bytes); an unreadable file is not DICOM."""
    try:
        return is_dicom(path)
    except OSError:
        return False


def check_image_files(files: list[Path]) -> None:
    """Check every image by the bundle's image contract before any inference, so a file the bundle would refuse
    (a broken link, a truncated file, an unsupported pixel mode) stops the run, with the bundle's one line for
    each, before masks are written."""
    contract = bundle_image_contract()
    bad = [problem for problem in map(contract.image_problem, files) if problem]
    if bad:
        raise InputError(f"{len(bad)} input file(s) cannot be segmented: " + "; ".join(bad[:10]))


# ----------------------------------------------------------------------------------------------- image files


def mask_file_name(relative: str, nifti: bool) -> str:
    """The mask's path under `<output>/masks/`: the input's relative path with `.png`, or `.nii.gz` for NIfTI (the
    mask keeps the input's voxel grid, affine and header)."""
    path = Path(relative)
    if not nifti:
        return str(path.with_suffix(".png"))
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    return str(path.with_name(stem + ".nii.gz"))


class ImageFileSourceOperator(Operator):
    """Emits one image per tick, read with the bundle's own loader (schedule it with `CountCondition(n)`).

    Named outputs:
        image: an SDK `Image` holding the array and MONAI metadata, as the bundle's `LoadImage(d)` makes them.
        record: a dict describing the source (path, output name, size) for the mask writer.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        files: list[Path],
        root: Path,
        reader: BundleImageReader,
        image_port: str = "image",
        **kwargs,
    ):
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
        start = time.perf_counter()
        array, meta, wh_order = self._reader(path)
        rel = path.name if self._root.is_file() else str(path.relative_to(self._root))
        width, height = self._reader.contract.image_size(path)  # as viewers show it: the mask overlays that
        nifti = self._reader.contract.is_nifti(path)
        record = {
            "source": str(path),
            "name": mask_file_name(rel, nifti),
            "rows": height,
            "columns": width,
            "wh_order": wh_order,
            "kind": "nifti" if nifti else "image",
            **read_timing(start),
        }
        op_output.emit(Image(array, metadata=meta), self.image_port)
        op_output.emit(record, "record")


# ----------------------------------------------------------------------------------------------- DICOM


def dicom_source(ds) -> str:
    """How records and messages name a DICOM instance: its file, or else its SOP Instance UID."""
    return str(getattr(ds, "filename", "") or ds.SOPInstanceUID)


def dicom_frame_count(ds, source: str) -> int:
    """The instance's number of frames; an instance without pixel data is refused (nothing to segment)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(
            f"{source}: DICOM instance {ds.get('SOPInstanceUID', '?')} has no Pixel Data "
            "(7FE0,0010); nothing to segment"
        )
    return int(ds.get("NumberOfFrames", 1) or 1)


def dicom_to_pixels(ds, source: str) -> np.ndarray:
    """The displayable pixels of a single-frame DICOM image: (rows, columns) grayscale or (rows, columns, 3) RGB."""
    frames = dicom_frame_count(ds, source)
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

    def __init__(
        self,
        fragment: Fragment,
        *args,
        reader: BundleImageReader,
        manifest: RunManifest,
        input_root: Path,
        dicom_files: list[Path] = (),
        image_port: str = "image",
        **kwargs,
    ):
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
        super().__init__(fragment, BooleanCondition(fragment, enable_tick=True, name=self._stop_name), *args, **kwargs)

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
        start = time.perf_counter()
        ds = sop.get_native_sop_instance()
        source = dicom_source(ds)
        pixels = dicom_to_pixels(ds, source)
        array, meta, wh_order = self._read_through_bundle_loader(pixels, source)
        meta["filename_or_obj"] = source

        one = DICOMSeries(series.SeriesInstanceUID)
        for attr in (
            "SeriesDate",
            "SeriesTime",
            "Modality",
            "SeriesDescription",
            "BodyPartExamined",
            "SeriesNumber",
            "Laterality",
            "PatientPosition",
        ):
            try:
                setattr(one, attr, getattr(series, attr))
            except Exception:  # attribute not set on the source series
                pass
        one.add_sop_instance(ds)
        study_selection = StudySelectedSeries(study)
        study_selection.add_selected_series(SelectedSeries("Ultrasound", one))

        record = {
            "source": source,
            "name": f"{ds.SOPInstanceUID}.png",
            "rows": int(ds.Rows),
            "columns": int(ds.Columns),
            "wh_order": wh_order,
            "kind": "dicom",
            "PatientID": str(ds.get("PatientID", "")),
            "StudyInstanceUID": str(ds.StudyInstanceUID),
            "SeriesInstanceUID": str(ds.SeriesInstanceUID),
            "SOPInstanceUID": str(ds.SOPInstanceUID),
            **read_timing(start),
        }
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
                    source = dicom_source(ds)
                    frames = dicom_frame_count(ds, source)
                    if frames != 1:
                        self._manifest.skip(
                            source,
                            f"multi-frame DICOM ({frames} frames); the model segments "
                            "single 2D frames: export single frames to segment them",
                        )
                        continue
                    queue.append((study_selection.study, series, sop, source))
        for study in self._studies or []:
            for series in study.get_all_series():
                if series.SeriesInstanceUID in selected_uids:
                    continue
                for sop in series.get_sop_instances():
                    ds = sop.get_native_sop_instance()
                    self._manifest.skip(dicom_source(ds), f"modality {ds.get('Modality', '?')} is not US (ultrasound)")
        loaded = {
            Path(str(getattr(sop.get_native_sop_instance(), "filename", ""))).resolve()
            for study in self._studies or []
            for series in study.get_all_series()
            for sop in series.get_sop_instances()
        }
        for path in self._dicom_files:
            if path not in loaded:
                self._manifest.skip(
                    str(path),
                    "not loaded by the SDK's DICOM loader (not valid DICOM, or no "
                    "Study/Series/SOP Instance UID: see the log)",
                )
        if not queue:
            raise InputError(
                f"{self._root}: no single-frame ultrasound (Modality US) DICOM image to segment "
                f"(see {self._manifest.path} for skipped files)"
            )
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
