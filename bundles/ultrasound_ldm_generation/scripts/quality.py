"""Quality of the generative model: diversity (MS-SSIM), memorisation (nearest neighbours), FID, a real-vs-generated
grid; written with the autoencoder's reconstruction metrics to ``quality.json``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import FIDMetric, MultiScaleSSIMMetric
from PIL import Image

from .losses import load_feature_network
from .utils import save_grid

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
    images = [np.asarray(Image.open(os.path.join(sample_dir, r["file"])).convert("L"), np.float32) / 255.0 for r in records]
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
    result["ratio_median_sample_to_real"] = result["sample_to_train"]["median"] / (
        result.get("validation_to_train", result["train_to_train"])["median"]
    )
    return result


@torch.no_grad()
def fid(samples: torch.Tensor, real: torch.Tensor, network_path: str | None, in_channels: int, device) -> dict:
    """FID between feature vectors of a local TorchScript feature network (globally average-pooled), or a reason."""
    if not network_path:
        return {"skipped": "no fid_network_path set: FID needs a local Inception-style feature network (TorchScript)"}
    network = load_feature_network(network_path, "FID").to(device)

    def features(images: torch.Tensor) -> torch.Tensor:
        out = []
        for batch in images.split(32):
            f = network(batch.repeat(1, in_channels, 1, 1).to(device))
            f = f[-1] if isinstance(f, (list, tuple)) else f
            out.append(f.flatten(2).mean(2) if f.ndim > 2 else f)
        return torch.cat(out).double().cpu()

    value = FIDMetric()(features(samples), features(real))
    return {"value": float(value), "network": os.path.basename(network_path), "real_images": len(real)}


def evaluate_quality(
    reconstruction: dict,
    sample_dir: str,
    train_items: Sequence[dict],
    validation_items: Sequence[dict],
    transform: Callable,
    output_dir: str,
    msssim_kernel_size: int = 7,
    num_pairs: int = 200,
    fid_network_path: str | None = None,
    fid_in_channels: int = 3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Compute every quality figure, write ``<output_dir>/quality.json`` and ``<output_dir>/real_vs_generated.png``."""
    samples, records = load_samples(sample_dir)
    train = load_real(train_items, transform)
    validation = load_real(validation_items, transform) if validation_items else None
    if samples.shape[2:] != train.shape[2:]:
        raise ValueError(
            f"{sample_dir}: samples are {tuple(samples.shape[2:])} pixels but the configured spatial_size gives "
            f"{tuple(train.shape[2:])}: evaluate with the spatial_size the model was trained at"
        )
    quality = {
        "reconstruction_validation": {k: float(v) for k, v in reconstruction.items()},
        "num_samples": len(samples),
        "num_train_images": len(train),
        "diversity_msssim": {
            "generated": pairwise_msssim(samples, num_pairs, msssim_kernel_size, seed),
            "real_train": pairwise_msssim(train, num_pairs, msssim_kernel_size, seed),
        },
        "nearest_neighbour_rmse": memorisation_check(samples, train, validation),
        "fid": fid(samples, train, fid_network_path, fid_in_channels, device),
        "sample_classes": {
            c or "unconditional": sum(r.get("class") == c for r in records) for c in {r.get("class") for r in records}
        },
    }
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "quality.json"), "w") as f:
        json.dump(quality, f, indent=2)
    count = min(8, len(samples), len(train))
    save_grid([list(train[:count]), list(samples[:count])], os.path.join(output_dir, "real_vs_generated.png"))
    logger.info(f"quality metrics written to {os.path.join(output_dir, 'quality.json')}")
    return quality
