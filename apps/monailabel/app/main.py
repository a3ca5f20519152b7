# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""MONAI Label app for the MGCC ultrasound lesion segmentation bundle.

This is MONAI Label's own ``monaibundle`` sample app (the one ``monailabel apps --download --name monaibundle``
copies), loaded from the installed ``monailabel`` package and used unchanged: it serves every bundle under
``<app>/model/<name>/`` named by ``--conf models <name>`` (inference through ``BundleInferTask``, training
through ``BundleTrainTask``). Three additions: active learning by the MGCC decoders' disagreement (the scoring method
and strategy ``mgcc_disagreement``, ``MGCCDisagreementScoring``); the bundle's ``postprocessing`` ends channel-first
``(1, W, H)`` (the
model-zoo convention, which MONAI Deploy needs), so the infer task squeezes the channel for MONAI Label's 2D writer
(``ChannelFirstBundleInferTask``, which on CPU also runs the bundle's ONNX export when it has one); and an input
check in front of ``/infer``: the model is a 2D
grayscale network, and MONAI Label answers any exception with a bare ``500 Internal Server Error``, so a
clinician uploading the wrong file would learn nothing. What an image may be is decided by the served bundle's
image contract (``<bundle>/scripts/image_contract.py``, the rules of ``python -m monai.bundle run``, ``mgcc prepare``
and the Deploy app: 16-bit, palette, RGBA and EXIF-rotated images are segmented as the bundle segments them).
Requests that cannot be segmented are refused with a 4xx status and the contract's sentence:

- unknown model name, image id not in the datastore, a broken link  -> 404
- not a PNG / JPEG / BMP / NIfTI file, a pixel mode the contract refuses -> 415
- truncated or corrupt file, a 3D volume, values that are not 8-bit gray levels -> 422
- smaller than ``MIN_SIZE`` or larger than ``MAX_PIXELS`` (this server's own limits) -> 422
- weights that do not fit the bundle's config (scoring; the bundle's one-line ``InputError``) -> 422

``mgcc label serve`` copies this file into the app folder it starts the server with.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import sys
from types import ModuleType

import torch
from fastapi import HTTPException
from monai.transforms import CastToTyped, SqueezeDimd
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.class_utils import unload_module

logger = logging.getLogger(__name__)

#: HTTP status of each kind of the image contract's refusals (``ImageRefused.kind``)
STATUS = {"missing": 404, "format": 415, "unreadable": 422, "shape": 422, "values": 422}
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


@functools.cache
def image_contract(bundle_path: str) -> ModuleType:
    """The bundle's ``scripts/image_contract.py`` (self-contained: numpy, torch, Pillow, nibabel), loaded once."""
    path = os.path.join(bundle_path, "scripts", "image_contract.py")
    spec = importlib.util.spec_from_file_location(f"mgcc_image_contract_{abs(hash(bundle_path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_size(width: int, height: int, name: str) -> None:
    if width < MIN_SIZE or height < MIN_SIZE:
        raise InputError(422, f"{name}: image is {width}x{height} pixels; at least {MIN_SIZE}x{MIN_SIZE} is needed.")
    if width * height > MAX_PIXELS:
        raise InputError(422, f"{name}: image is {width}x{height} pixels; at most {MAX_PIXELS} pixels are accepted.")


def check_image(path: str, contract: ModuleType, name: str | None = None) -> None:
    """Raise ``InputError`` (status and the contract's sentence, naming ``name``) unless ``path`` is an image the
    bundle's ``contract`` accepts and of a size this server takes."""
    name = name or os.path.basename(path)
    if not contract.is_nifti(path):  # the size from the header first: an oversized image is refused undecoded
        try:
            size = contract.raster_size(path)
        except Exception:  # a header that cannot be read: the contract below names the problem
            size = None
        if size:
            _check_size(*size, name)
    try:
        contract.check_image(path)
    except contract.ImageRefused as refused:
        raise InputError(STATUS[refused.kind], f"{name}: {refused.reason}") from None
    if contract.is_nifti(path):
        import nibabel as nib

        width, height = nib.load(path).shape[:2]
    else:
        width, height = contract.raster_size(path)
    _check_size(int(width), int(height), name)


def bundle_stop(stop: SystemExit) -> HTTPException:
    """A bundle's ``InputError`` (a ``SystemExit``: one line, exit 1 under ``monai.bundle run``) as a 422 with that
    line, so it answers the request instead of ending the worker."""
    return HTTPException(status_code=422, detail=str(stop.code).removeprefix("error: "))


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
    checkpoint at full width, docs/results.md, "MONAI Label latency") through the bundle's own
    ``inference_onnx.json``, while the export is at least as new as ``models/model.pt``;
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
            try:
                # checked against the config's width and size
                weights = parser.get_parsed_content("checkpoint_loader#load_path")
            except SystemExit as stop:
                raise bundle_stop(stop) from None
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
                datastore.update_image_info(
                    image_id, {DISAGREEMENT: inferer.last_scores[0], f"{DISAGREEMENT}_ts": model_ts}
                )
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
        scorable = [
            path for path in self.models.values() if os.path.isfile(os.path.join(path, "configs", "score.json"))
        ]
        if scorable:  # the app serves one MGCC bundle; with several, the first one scores
            methods[DISAGREEMENT] = MGCCDisagreementScoring(scorable[0])
        return methods

    def init_strategies(self):
        strategies = super().init_strategies()
        # MONAI Label's own top-score strategy, reading the score the scoring method stored
        strategies[DISAGREEMENT] = Epistemic(
            key=DISAGREEMENT, desc="Unlabeled image the MGCC decoders disagree on most"
        )
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
                check_image(path, image_contract(self._infers[model].bundle_path), name)
            except InputError as e:
                logger.warning(f"Refused infer request: {e.message}")
                raise HTTPException(status_code=e.status, detail=e.message) from None
        try:
            return super().infer(request, datastore)
        except SystemExit as stop:
            raise bundle_stop(stop) from None
