"""Wrap 2D PNG images as ultrasound DICOM files (US Image Storage, single frame), e.g. to try the app's DICOM
path on phantom or BUSI images. Run with the deploy environment (it has pydicom 3):

    .venv-deploy/bin/python apps/deploy/png_to_us_dicom.py OUT_DIR IMAGE.png [IMAGE.png ...]
        [--patient-id ID] [--frames N] [--modality US] [--no-pixel-data]

All files written by one call share one patient, study and series. `--frames`, `--modality` and
`--no-pixel-data` make deliberately unusable files (cine loop, non-ultrasound, header only) for tests.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def png_to_dicom(
    png: Path,
    out: Path,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    number: int,
    frames: int = 1,
    modality: str = "US",
    pixel_data: bool = True,
) -> Dataset:
    """Writes `out` from `png` (8-bit gray or RGB) and returns the dataset."""
    with Image.open(png) as im:
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB" if im.mode in ("RGBA", "P") else "L")
        pixels = np.asarray(im)
    sop_class = US_IMAGE_STORAGE if frames == 1 else US_MULTIFRAME_IMAGE_STORAGE
    if modality.upper() == "CT":
        sop_class = CT_IMAGE_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    now = datetime.datetime.now()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Phantom^{patient_id}", patient_id, "", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", f"ACC{patient_id}", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, number
    ds.StudyDescription, ds.SeriesDescription = "Breast ultrasound", "B-mode"
    ds.BodyPartExamined, ds.Manufacturer = "BREAST", "MGCC-MONAI png_to_us_dicom"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    if pixels.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 33.3
        pixels = np.stack([pixels] * frames)
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return ds


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("images", type=Path, nargs="+")
    ap.add_argument("--patient-id", default="PH0001")
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--modality", default="US")
    ap.add_argument("--no-pixel-data", action="store_true")
    args = ap.parse_args(argv)
    study_uid, series_uid = generate_uid(), generate_uid()
    for number, png in enumerate(args.images, 1):
        out = args.out_dir / f"{png.stem}.dcm"
        png_to_dicom(
            png,
            out,
            patient_id=args.patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            number=number,
            frames=args.frames,
            modality=args.modality,
            pixel_data=not args.no_pixel_data,
        )
        print(out)


if __name__ == "__main__":
    main()
