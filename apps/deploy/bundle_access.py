"""Access to the MGCC segmentation bundle the app runs: which bundle and which export of it, its parsed configs,
its network input and output names, the postprocessing checks, and its own image loader.

`BundleImageReader` reads an image with the *bundle's own* `LoadImage(d)` transform (found in the bundle's
`preprocessing` config). `MonaiBundleInferenceOperator` drops `LoadImage*` from the bundle's preprocessing
because its input arrives in memory; the app's sources put exactly that loader in front of it, so the app's
arrays are bit-for-bit what `python -m monai.bundle run` would feed the network.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from errors import InputError
from monai.deploy.core.models import Model
from monai.deploy.operators.monai_bundle_inference_operator import get_bundle_config

logger = logging.getLogger(__name__)


def resolve_model_path(model_path: str | Path) -> Path:
    """What the app runs: an ONNX export (`<bundle>/models/model.onnx`), a TorchScript `model.ts` (configs
    embedded by `ckpt_export`), or a bundle folder (`configs/metadata.json` + `models/`); `model_path` may also
    be a MAP model folder holding one of these (`<models>/<name>/...`).

    A bundle folder resolves to its fastest export, as the SDK's own directory loader prefers `model.ts`: on a
    machine without CUDA `models/model.onnx` (run by ONNX Runtime, about 1.3x faster than TorchScript on CPU),
    then `models/model.ts`; with CUDA the TorchScript export first (ONNX Runtime runs here on the CPU). The app
    loads it once (the SDK operator re-instantiates a directory bundle's network for every image). An export
    older than the folder's `models/model.pt` is refused: it would silently run stale weights."""
    path = Path(model_path).expanduser().resolve()
    if path.is_file():
        if path.suffix == ".onnx" and not (bundle_folder_of(path) / "configs" / "metadata.json").is_file():
            raise InputError(
                f"{path}: an ONNX model runs inside its bundle (<bundle>/models/model.onnx), which "
                "holds the pre- and postprocessing; this file is not in one"
            )
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
    exports = ["model.ts", "model.onnx"] if torch.cuda.is_available() else ["model.onnx", "model.ts"]
    pt = path / "models" / "model.pt"
    for export in (path / "models" / name for name in exports):
        if export.is_file():
            if pt.is_file() and pt.stat().st_mtime > export.stat().st_mtime:
                raise InputError(
                    f"{export} is older than {pt}: export it again (see the bundle's README) or "
                    "remove it to run the checkpoint"
                )
            return export
    return path


def bundle_root_of(bundle_path: Path) -> Path | None:
    """The bundle folder whose `scripts` package the configs may import: the bundle itself, or, for an
    export at `<bundle>/models/model.ts` or `model.onnx`, that bundle."""
    root = bundle_path if bundle_path.is_dir() else bundle_path.parent.parent
    return root if (root / "scripts" / "__init__.py").is_file() else None


def bundle_folder_of(bundle_path: Path) -> Path:
    """The folder the bundle operator reads configs from: the ONNX export's bundle, else `bundle_path` itself
    (a `model.ts` carries its configs)."""
    return bundle_path.parent.parent if bundle_path.suffix == ".onnx" else bundle_path


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


def bundle_transforms(parser, name: str) -> list:
    """The transforms of the bundle's `name` Compose (`preprocessing`, `postprocessing`), nested Composes
    inlined by MONAI's `Compose.flatten()`; an empty list when `name` is not a Compose."""
    from monai.transforms import Compose

    content = parser.get_parsed_content(name)
    return list(content.flatten().transforms) if isinstance(content, Compose) else []


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
    names = [type(t).__name__ for t in bundle_transforms(parser, name)]
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


def bundle_image_contract() -> ModuleType:
    """The bundle's image contract (`scripts/image_contract.py` of the bundle whose configs `read_bundle_config`
    read): what an input may be and how it becomes 8-bit grayscale, as `python -m monai.bundle run`, `mgcc prepare`
    and the MONAI Label app decide it."""
    try:
        return importlib.import_module("scripts.image_contract")
    except ImportError as ex:
        raise InputError(f"the bundle has no image contract (scripts/image_contract.py): {ex}") from ex


class BundleImageReader:
    """Reads an image file with the `LoadImage`/`LoadImaged` transform of the bundle's preprocessing; its sizes
    and refusals are the bundle's image contract's (`contract`)."""

    def __init__(self, parser, preprocessing: str = "preprocessing", key: str = "image"):
        from monai.transforms import LoadImage, LoadImaged

        transforms = bundle_transforms(parser, preprocessing)
        loaders = [t for t in transforms if isinstance(t, (LoadImage, LoadImaged))]
        if not loaders:
            raise InputError(
                f"bundle `{preprocessing}` has no LoadImage/LoadImaged transform; the app reads inputs with it"
            )
        self.loader = loaders[0]
        self.contract = bundle_image_contract()
        self.key = key
        self.dict_keys = list(getattr(self.loader, "keys", []))
        if isinstance(self.loader, LoadImaged) and key not in self.dict_keys:
            raise InputError(f"bundle LoadImaged keys {self.dict_keys} do not include the network input `{key}`")

    def __call__(self, path: str | Path):
        """Returns `(array, metadata, wh_order)`: the loaded array (as the bundle's loader makes it), its
        metadata dict, and whether the spatial axes are (width, height) (MONAI's PIL reader) or (height, width)."""
        from monai.data import MetaTensor

        try:
            width, height = self.contract.image_size(path)  # as viewers show it (EXIF orientation)
            if isinstance(self.dict_keys, list) and self.dict_keys:
                img = self.loader({self.key: str(path)})[self.key]
            else:
                img = self.loader(str(path))
        except self.contract.ImageRefused as refused:
            raise InputError(str(refused)) from None
        except Exception as ex:
            raise InputError(f"{path}: cannot read as an image: {ex}") from ex
        if not isinstance(img, MetaTensor):
            raise InputError(f"{path}: the bundle loader returned {type(img).__name__}, expected a MetaTensor")
        meta = dict(img.meta)
        spatial = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", ())).tolist())
        while len(spatial) > 2 and spatial[-1] == 1:  # a one-slice NIfTI: (W, H, 1)
            spatial = spatial[:-1]
        if spatial == (width, height):
            wh_order = True
        elif spatial == (height, width):
            wh_order = False
        else:
            raise InputError(
                f"{path}: loaded spatial shape {spatial} matches neither {(width, height)} nor "
                f"{(height, width)}; only 2D images are supported"
            )
        if width == height:  # ambiguous by shape: MONAI readers reverse indexing unless told otherwise
            reader = getattr(self.loader, "_loader", self.loader)
            readers = [r for r in getattr(reader, "readers", []) if hasattr(r, "reverse_indexing")]
            wh_order = bool(readers[-1].reverse_indexing) if readers else True
        return img.detach().cpu().numpy(), meta, wh_order


class OnnxBundleModel(Model):
    """The bundle's ONNX export as an App SDK model, loaded once, when the app starts.

    `path` is the bundle folder: the bundle operator reads the preprocessing, inferer and postprocessing from
    there. The predictor is the bundle's own ONNX network, `network_def` of `inference.json` +
    `inference_onnx.json` (`scripts.onnx_network.OnnxRuntimeNetwork`), so the app runs what
    `python -m monai.bundle run --config_file "['configs/inference.json','configs/inference_onnx.json']"` runs."""

    model_type = "mgcc_bundle_onnx"

    def __init__(self, onnx_path: Path):
        super().__init__(str(bundle_folder_of(Path(onnx_path))), name="model")
        parser = read_bundle_config(Path(self.path), ["inference", "inference_onnx"])
        parser["onnx_path"] = str(onnx_path)
        try:
            self.predictor = parser.get_parsed_content("network_def")
        except Exception as ex:
            raise InputError(f"{onnx_path}: cannot load the ONNX export: {ex}") from ex
        logger.info("ONNX Runtime runs %s", onnx_path)
