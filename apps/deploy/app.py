"""MGCC ultrasound lesion segmentation as a MONAI Deploy application.

    python apps/deploy -i <input folder> -o <output folder> -m <model.ts | bundle folder>

(or `HOLOSCAN_INPUT_PATH`, `HOLOSCAN_OUTPUT_PATH`, `HOLOSCAN_MODEL_PATH`, as in a MAP).

Input, detected from the folder's content:
* 2D images (PNG; also JPEG, BMP): one mask PNG each, `<output>/masks/<same relative path>.png`; a one-slice NIfTI
  gives a NIfTI mask on its grid, with its affine and header, `<output>/masks/<same relative path>.nii.gz`.
* ultrasound DICOM files (single-frame, Modality US): one mask PNG each, `<output>/masks/<SOPInstanceUID>.png`,
  and one DICOM Segmentation each in `<output>/dicom_seg/`, referencing the source instance and carrying its
  patient and study identifiers (the SDK's `DICOMSegmentationWriterOperator`, built on highdicom).
A folder holding both kinds is refused; other files, and image files that cannot be decoded (a corrupt or
truncated PNG), are skipped and listed in `<output>/predictions.json`: the other images are still segmented.

The model and all pre- and post-processing come from the MGCC segmentation bundle: its TorchScript export
(`models/model.ts`, configs embedded by `python -m monai.bundle ckpt_export`) or the bundle folder itself, run by
the SDK's `MonaiBundleInferenceOperator` with the bundle's `preprocessing`, `inferer` and `postprocessing`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bundle_access import (
    BundleImageReader,
    OnnxBundleModel,
    bundle_folder_of,
    bundle_io_names,
    check_postprocessing,
    read_bundle_config,
    resolve_model_path,
)
from errors import InputError
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, ModelFactory
from monai.deploy.core.domain import Image
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_utils import ModelInfo
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)
from pydicom.sr.codedict import codes
from sources import (
    IMAGE_SUFFIXES,
    US_SELECTION_RULES,
    DICOMInstanceSourceOperator,
    ImageFileSourceOperator,
    check_image_files,
    classify_inputs,
)
from writers import MaskWriterOperator, RunManifest

APP_VERSION = "0.1.0"
CONFIG_NAMES = ["inference"]


def readable_images(files: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Splits image files into those the input check accepts and those it refuses, with its reason, so one corrupt
    file in a batch is listed instead of stopping the whole run."""
    readable, refused = [], []
    for f in files:
        try:
            check_image_files([f])
            readable.append(f)
        except InputError as ex:  # "1 input file(s) cannot be ...: <file>: <reason>"
            refused.append((f, str(ex).split(": ", 1)[-1].removeprefix(f"{f}: ")))
    return readable, refused


class MGCCUltrasoundSegApp(Application):
    """Segments breast lesions in 2D ultrasound images (PNG or DICOM) with the MGCC segmentation bundle."""

    def __init__(self, *args, **kwargs):
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.manifest: RunManifest | None = None  # predictions.json, once the inputs are checked
        self.expected: int | None = None  # how many image files should give a mask
        super().__init__(*args, **kwargs)

    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        input_path = Path(app_context.input_path).expanduser().resolve()
        output_path = Path(app_context.output_path).expanduser().resolve()
        model_path = resolve_model_path(app_context.model_path)
        bundle_path = bundle_folder_of(model_path)
        self._logger.info(f"input {input_path}, output {output_path}, model {model_path}")

        parser = read_bundle_config(bundle_path, CONFIG_NAMES)
        input_key, output_key = bundle_io_names(parser)
        post = check_postprocessing(parser)
        reader = BundleImageReader(parser, key=input_key)
        meta = parser["_meta_"]

        images, dicoms, skipped = classify_inputs(input_path, exclude=output_path)
        if images and dicoms:
            raise InputError(
                f"{input_path}: holds both image files ({len(images)}) and DICOM files "
                f"({len(dicoms)}); run the app once per kind"
            )
        if not images and not dicoms:
            listed = ", ".join(p.name for p, _ in skipped[:5]) or "no files at all"
            raise InputError(
                f"{input_path}: no image ({', '.join(IMAGE_SUFFIXES)}) or DICOM file to segment (found: {listed})"
            )
        images, unreadable = readable_images(images)
        if unreadable and not images:
            raise InputError(
                f"{input_path}: none of the {len(unreadable)} image file(s) can be segmented: "
                + "; ".join(f"{path.name}: {reason}" for path, reason in unreadable[:10])
            )
        skipped += unreadable
        manifest = RunManifest(
            output_path / "predictions.json",
            {
                "app": f"MGCC ultrasound segmentation {APP_VERSION}",
                "bundle": str(bundle_path),
                "model": str(model_path),
                "bundle_name": meta.get("name", ""),
                "bundle_version": meta.get("version", ""),
                "input": str(input_path),
                "mode": "image" if images else "dicom",
                "postprocessing": post,
            },
        )
        for path, reason in skipped:
            manifest.skip(str(path), reason)
        self.manifest, self.expected = manifest, len(images) or None  # DICOM: instances are counted while read

        # The bundle operator takes `app_context.models` over `bundle_path`. The SDK's ModelFactory made it from
        # `-m` as given, which for a folder is a generic `Model` without a predictor: point it at what runs.
        if model_path.suffix == ".onnx":
            app_context.models = OnnxBundleModel(model_path)  # ONNX Runtime, loaded once
        elif model_path.is_dir():
            # directory bundle: the operator builds the network from the config and loads models/model.pt
            app_context.models = None
        else:
            app_context.models = ModelFactory.create(str(model_path))  # TorchScript, loaded once
        # The bundle operator: model, preprocessing (minus LoadImage), inferer and postprocessing from the bundle.
        bundle_op = MonaiBundleInferenceOperator(
            self,
            input_mapping=[IOMapping(input_key, Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping(output_key, Image, IOType.IN_MEMORY)],
            app_context=app_context,
            bundle_path=bundle_path,
            bundle_config_names=BundleConfigNames(config_names=CONFIG_NAMES),
            name="mgcc_bundle_op",
        )
        writer = MaskWriterOperator(
            self,
            output_folder=output_path,
            manifest=manifest,
            emit_seg=bool(dicoms),
            pred_port=output_key,
            name="mask_writer",
        )
        self.add_flow(bundle_op, writer, {(output_key, output_key)})

        if images:
            source = ImageFileSourceOperator(
                self,
                CountCondition(self, len(images)),
                files=images,
                root=input_path,
                reader=reader,
                image_port=input_key,
                name="image_source",
            )
            self.add_flow(source, bundle_op, {(input_key, input_key)})
            self.add_flow(source, writer, {("record", "record")})
            return

        if not input_path.is_dir():
            raise InputError(f"{input_path}: DICOM input must be a folder of DICOM files")
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_path, name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(
            self, rules=US_SELECTION_RULES, all_matched=True, name="us_series_selector"
        )
        source = DICOMInstanceSourceOperator(
            self,
            reader=reader,
            manifest=manifest,
            input_root=input_path,
            dicom_files=dicoms,
            image_port=input_key,
            name="dicom_instance_source",
        )
        seg_writer = DICOMSegmentationWriterOperator(
            self,
            segment_descriptions=[
                SegmentDescription(
                    segment_label="Breast lesion",
                    segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                    segmented_property_type=codes.SCT.Lesion,
                    algorithm_name="MGCC ultrasound lesion segmentation",
                    algorithm_family=codes.DCM.ArtificialIntelligence,
                    algorithm_version=str(meta.get("version", APP_VERSION)),
                )
            ],
            model_info=ModelInfo(
                "MGCC-MONAI", meta.get("name", "ultrasound_mgcc_segmentation"), str(meta.get("version", "")), ""
            ),
            custom_tags={"SeriesDescription": "AI lesion segmentation (MGCC), not for clinical use"},
            output_folder=output_path / "dicom_seg",
            omit_empty_frames=False,
            name="dicom_seg_writer",
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(loader, source, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, source, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(source, bundle_op, {(input_key, input_key)})
        self.add_flow(source, writer, {("record", "record")})
        self.add_flow(writer, seg_writer, {("seg_image", "seg_image")})
        self.add_flow(source, seg_writer, {("study_selected_series_list", "study_selected_series_list")})


if __name__ == "__main__":
    MGCCUltrasoundSegApp().run()
