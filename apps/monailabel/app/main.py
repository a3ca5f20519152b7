# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""MONAI Label app for the MGCC ultrasound lesion segmentation bundle.

This is MONAI Label's own ``monaibundle`` sample app (the one ``monailabel apps --download --name monaibundle``
copies), loaded from the installed ``monailabel`` package and used unchanged: it serves every bundle under
``<app>/model/<name>/`` named by ``--conf models <name>`` (inference through ``BundleInferTask``, training
through ``BundleTrainTask``). Three additions: active learning by the MGCC decoders' disagreement (the scoring method
and strategy ``mgcc_disagreement``, ``MGCCDisagreementScoring``); the bundle's ``postprocessing`` ends channel-first ``(1, W, H)`` (the
model-zoo convention, which MONAI Deploy needs), so the infer task squeezes the channel for MONAI Label's 2D writer
(``ChannelFirstBundleInferTask``, which on CPU also runs the bundle's ONNX export when it has one); and an input check in front of ``/infer``: the model is a 2D
grayscale network, and MONAI Label answers any exception with a bare ``500 Internal Server Error``, so a
clinician uploading the wrong file would learn nothing. Requests that cannot be segmented are refused with a
4xx status and a sentence saying what was wrong:

- unknown model name                        -> 404
- image id not in the datastore             -> 404
- not a PNG / JPEG / NIfTI file, unreadable -> 415
- truncated or corrupt file                 -> 422
- RGBA, 16-bit, palette, 1-bit images       -> 415 (8-bit grayscale or RGB only)
- a 3D volume (NIfTI with more than one slice) -> 422

``mgcc label serve`` copies this file into the app folder it starts the server with.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys

import torch
from fastapi import HTTPException
from monai.transforms import CastToTyped, SqueezeDimd
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.class_utils import unload_module

logger = logging.getLogger(__name__)

PNG_JPEG = (".png", ".jpg", ".jpeg")
NIFTI = (".nii", ".nii.gz")
ACCEPTED_MODES = {"L": "8-bit grayscale", "RGB": "8-bit RGB"}
MIN_SIZE = 16
MAX_PIXELS = 4096 * 4096


def _sample_app_main() -> str:
    """Path of the installed ``monaibundle`` sample app's ``main.py`` (where ``monailabel apps`` copies from)."""
    import monailabel

    candidates = [
        os.path.join(sys.prefix, "monailabel", "sample-apps", "monaibundle", "main.py"),
        os.path.join(sys.prefix, "local", "monailabel", "sample-apps", "monaibundle", "main.py"),
        os.path.join(os.path.dirname(os.path.dirname(monailabel.__file__)), "sample-apps", "monaibundle", "main.py"),
    ]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise RuntimeError(
        "MONAI Label's 'monaibundle' sample app was not found (looked in: " + ", ".join(candidates) + "). "
        "Reinstall the MONAI Label environment: apps/monailabel/setup_env.sh"
    )


def _load_sample_app():
    spec = importlib.util.spec_from_file_location("monailabel_sample_monaibundle", _sample_app_main())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_monaibundle = _load_sample_app()


class InputError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _suffix(path: str) -> str:
    lower = path.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]


def _check_size(width: int, height: int, name: str) -> None:
    if width < MIN_SIZE or height < MIN_SIZE:
        raise InputError(422, f"{name}: image is {width}x{height} pixels; at least {MIN_SIZE}x{MIN_SIZE} is needed.")
    if width * height > MAX_PIXELS:
        raise InputError(422, f"{name}: image is {width}x{height} pixels; at most {MAX_PIXELS} pixels are accepted.")


def check_png_jpeg(path: str, name: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()  # structure and checksums, without decoding
        with Image.open(path) as im:
            im.load()  # decodes every pixel: catches truncated data that verify() lets through
            mode, (width, height) = im.mode, im.size
    except UnidentifiedImageError:
        raise InputError(415, f"{name}: not a readable PNG or JPEG image.") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(422, f"{name}: corrupt or truncated image ({e}).") from None
    if mode not in ACCEPTED_MODES:
        hint = {
            "RGBA": "an RGBA image (with transparency)",
            "LA": "a grayscale image with transparency",
            "I;16": "a 16-bit image",
            "I;16B": "a 16-bit image",
            "I": "a 32-bit integer image",
            "F": "a floating-point image",
            "P": "a palette image",
            "1": "a 1-bit image",
        }.get(mode, f"an image of mode {mode}")
        raise InputError(
            415,
            f"{name}: {hint}; the MGCC model takes 8-bit grayscale (or 8-bit RGB) B-mode images. "
            "Export the image as an 8-bit grayscale PNG.",
        )
    _check_size(width, height, name)


def check_nifti(path: str, name: str) -> None:
    import nibabel as nib
    import numpy as np

    try:
        img = nib.load(path)
        shape = img.shape
        np.asanyarray(img.dataobj)  # reads all voxels: catches truncated files
    except Exception as e:  # nibabel raises several types for damaged files
        raise InputError(422, f"{name}: not a readable NIfTI image ({e}).") from None
    spatial = [s for s in shape[2:] if s != 1]
    if len(shape) < 2 or spatial:
        raise InputError(
            422,
            f"{name}: a volume of shape {tuple(shape)}; the MGCC model is 2D and takes one image "
            "(a PNG, or a one-slice NIfTI of shape (W, H) or (W, H, 1)).",
        )
    _check_size(int(shape[0]), int(shape[1]), name)


def check_image(path: str, name: str | None = None) -> None:
    """Raise ``InputError`` unless ``path`` is an image the MGCC model can segment."""
    name = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise InputError(404, f"{name}: image file not found.")
    if os.path.getsize(path) == 0:
        raise InputError(422, f"{name}: empty file.")
    suffix = _suffix(path)
    if suffix in PNG_JPEG:
        check_png_jpeg(path, name)
    elif suffix in NIFTI:
        check_nifti(path, name)
    else:
        raise InputError(415, f"{name}: unsupported file type '{suffix}'; send a PNG, JPEG or NIfTI image.")


@contextlib.contextmanager
def bundle_parser(bundle_path: str, config_names: tuple[str, ...]):
    """The bundle's configs parsed with ``bundle_root`` set, and its ``scripts`` package importable meanwhile."""
    from monai.bundle import ConfigParser

    sys.path.insert(0, bundle_path)
    unload_module("scripts")
    try:
        parser = ConfigParser()
        parser.read_meta(os.path.join(bundle_path, "configs", "metadata.json"))
        parser.read_config([os.path.join(bundle_path, "configs", name) for name in config_names])
        parser["bundle_root"] = bundle_path
        yield parser
    finally:
        sys.path.remove(bundle_path)
        unload_module("scripts")


class ChannelFirstBundleInferTask(BundleInferTask):
    """``BundleInferTask`` for a bundle whose ``postprocessing`` ends channel-first: the ``(1, W, H)`` mask
    becomes the ``(W, H)`` uint8 array MONAI Label's writer turns into a 2D label (before ``Restored``).

    On CPU it runs the bundle's ONNX export (``models/model.onnx``; ``/infer`` 1.85x faster than from the
    checkpoint at full width, docs/results.md, "MONAI Label latency") through the bundle's own ``inference_onnx.json``, while the export is at least as new as ``models/model.pt``;
    once training has written newer weights it runs the checkpoint again, as MONAI Label does without an export."""

    def __init__(self, path: str, conf: dict, **kwargs):
        super().__init__(path, conf, **kwargs)
        # The bundle's output has one sigmoid channel per label (`channel_def` {"0": "lesion"}), written as mask
        # value 1: MONAI Label reads channel indices as label values, so shift them past background (0).
        self.labels = {name: index + 1 for name, index in self.labels.items()}

    def post_transforms(self, data=None):
        post = list(super().post_transforms(data))
        at = len(post) - 1 if self.add_post_restore else len(post)
        post[at:at] = [SqueezeDimd(keys=self.key_pred, dim=0), CastToTyped(keys=self.key_pred, dtype=torch.uint8)]
        return post

    def _get_network(self, device, data):
        models = os.path.join(self.bundle_path, "models")
        onnx, weights = os.path.join(models, "model.onnx"), os.path.join(models, "model.pt")
        if torch.device(device).type != "cpu" or not os.path.isfile(onnx):
            return super()._get_network(device, data)
        stamp = os.stat(onnx).st_mtime
        if os.path.isfile(weights) and os.stat(weights).st_mtime > stamp:
            logger.warning(f"{onnx} is older than {weights}: running the checkpoint (export again for speed)")
            return super()._get_network(device, data)
        if getattr(self, "_onnx", (None, None))[1] != stamp:
            with bundle_parser(self.bundle_path, ("inference.json", "inference_onnx.json")) as parser:
                self._onnx = (parser.get_parsed_content("network_def"), stamp)
            logger.info(f"ONNX Runtime runs {onnx}")
        return self._onnx[0]


#: the scoring method and the active-learning strategy, and the image-info key the score is kept under
DISAGREEMENT = "mgcc_disagreement"


class MGCCDisagreementScoring(ScoringMethod):
    """Scores the datastore's unlabeled images with the bundle's ``configs/score.json``: the disagreement of the
    three perturbed auxiliary decoders with the main one, one forward pass per image (see the bundle's
    ``scripts/score.py``). Each score is kept in the image's info under ``mgcc_disagreement``, with the weights'
    modification time, so an image is scored again only after the model changed (training)."""

    def __init__(self, bundle_path: str) -> None:
        super().__init__("MGCC: disagreement of the auxiliary decoders with the main one (one forward pass)")
        self.bundle_path = bundle_path

    def __call__(self, request, datastore):
        with bundle_parser(self.bundle_path, ("inference.json", "score.json")) as parser:
            device = parser.get_parsed_content("device")
            preprocessing = parser.get_parsed_content("preprocessing")
            network = parser.get_parsed_content("network")
            inferer = parser.get_parsed_content("inferer")
            weights = parser.get_parsed_content("handlers#0#load_path")  # checked against the config's width and size
            state = torch.load(weights, map_location=device, weights_only=True)
            network.load_state_dict(state["model"] if isinstance(state.get("model"), dict) else state)
            network.eval()
            model_ts = int(os.stat(weights).st_mtime)
            scored, skipped = 0, 0
            for image_id in datastore.get_unlabeled_images():
                if datastore.get_image_info(image_id).get(f"{DISAGREEMENT}_ts") == model_ts:
                    skipped += 1
                    continue
                image = preprocessing({"image": datastore.get_image_uri(image_id)})["image"]
                with torch.no_grad():
                    inferer(image[None].to(device), network)
                datastore.update_image_info(image_id, {DISAGREEMENT: inferer.last_scores[0], f"{DISAGREEMENT}_ts": model_ts})
                scored += 1
            logger.info(f"{DISAGREEMENT}: scored {scored} unlabeled image(s), {skipped} already scored for this model")
            return {"scored": scored, "skipped": skipped}


class MGCCLabelApp(_monaibundle.MyApp, MONAILabelApp):
    """The ``monaibundle`` sample app with the channel-first infer task and the /infer input check described in
    this module's docstring.

    ``MONAILabelApp`` is listed as a direct base only so that MONAI Label's app loader (which looks for a
    class whose direct base is named ``MONAILabelApp``) finds this class; the MRO is unchanged.
    """

    def init_infers(self):
        infers = super().init_infers()
        for name, path in self.models.items():
            if type(infers.get(name)) is BundleInferTask:
                infers[name] = ChannelFirstBundleInferTask(path, self.conf)
        return infers

    def init_scoring_methods(self):
        methods = super().init_scoring_methods()
        scorable = [path for path in self.models.values() if os.path.isfile(os.path.join(path, "configs", "score.json"))]
        if scorable:  # the app serves one MGCC bundle; with several, the first one scores
            methods[DISAGREEMENT] = MGCCDisagreementScoring(scorable[0])
        return methods

    def init_strategies(self):
        strategies = super().init_strategies()
        # MONAI Label's own top-score strategy, reading the score the scoring method stored
        strategies[DISAGREEMENT] = Epistemic(key=DISAGREEMENT, desc="Unlabeled image the MGCC decoders disagree on most")
        return strategies

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(
                status_code=404, detail=f"Unknown model '{model}'. Available models: {sorted(self._infers)}."
            )
        image = request.get("image")
        if isinstance(image, str) and image:
            if os.path.exists(image):
                path, name = image, "uploaded image"
            else:
                store = datastore if datastore else self.datastore()
                try:
                    path = store.get_image_uri(image)
                except Exception:
                    path = ""
                name = f"image '{image}'"
                if not path or not os.path.exists(path):
                    raise HTTPException(status_code=404, detail=f"{name} is not in the datastore.")
            try:
                check_image(path, name)
            except InputError as e:
                logger.warning(f"Refused infer request: {e.message}")
                raise HTTPException(status_code=e.status, detail=e.message) from None
        return super().infer(request, datastore)
