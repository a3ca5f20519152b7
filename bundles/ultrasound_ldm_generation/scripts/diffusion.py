"""Latent diffusion training pieces: latents of the frozen autoencoder computed once, the stored latent scale factor,
class conditioning, and the batch preparation that feeds them to MONAI's ``SupervisedTrainer`` + ``DiffusionInferer``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.utils import CommonKeys

#: fill value of the "no class" context, the value MONAI's ``DiffusionInferer.sample(cfg=...)`` uses
UNCONDITIONAL_FILL = -1.0

logger = logging.getLogger(__name__)


class ScaleFactor(torch.nn.Module):
    """The latent scale factor (1 / std of the training latents) as a buffer, so that ``CheckpointSaver`` writes it
    into the diffusion checkpoint (entry ``scale_factor``) and resuming or sampling restores the same value."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("value", torch.tensor(float(value)))

    def extra_repr(self) -> str:
        return f"value={self.value.item():.6g}"


@torch.no_grad()
def encode_latents(
    autoencoder: torch.nn.Module, dataset: Sequence[dict], device: torch.device | str, batch_size: int = 16
) -> list[dict]:
    """Encode every training image once with the frozen autoencoder, as is and mirrored left-right (the training
    augmentation): items ``{"z_mu", "z_sigma"}`` of shape ``(2, C, h, w)`` (index 1 mirrored), plus ``class`` when the
    dataset has one. Diffusion training then draws ``z = z_mu + z_sigma * noise`` per step instead of running the
    encoder on every batch."""
    encoder = getattr(autoencoder, "module", autoencoder)
    items: list[dict] = []
    for start in range(0, len(dataset), batch_size):
        records = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([torch.as_tensor(r[CommonKeys.IMAGE]) for r in records]).to(device)
        z_mu, z_sigma = encoder.encode(torch.cat([images, images.flip(-1)]))
        n = len(records)
        for i, record in enumerate(records):
            item = {"z_mu": torch.stack([z_mu[i], z_mu[n + i]]).cpu(), "z_sigma": torch.stack([z_sigma[i], z_sigma[n + i]]).cpu()}
            if "class" in record:
                item["class"] = record["class"]
            items.append(item)
    logger.info(f"encoded {len(items)} training images (and their mirrors) into latents of shape {tuple(z_mu.shape[1:])}")
    return items


def draw_latents(batch: dict, device: torch.device | str | None = None) -> torch.Tensor:
    """One posterior sample per item of a batch of ``encode_latents`` items, of a randomly chosen orientation."""
    z_mu, z_sigma = batch["z_mu"].to(device), batch["z_sigma"].to(device)
    rows = torch.arange(z_mu.shape[0], device=z_mu.device)
    pick = torch.randint(0, z_mu.shape[1], (z_mu.shape[0],), device=z_mu.device)
    z_mu, z_sigma = z_mu[rows, pick], z_sigma[rows, pick]
    return z_mu + z_sigma * torch.randn_like(z_sigma)


@torch.no_grad()
def compute_scale_factor(loader: Iterable, device: torch.device | str, max_batches: int | None = None) -> float:
    """1 / std of the training latents (posterior samples of ``encode_latents`` items) over all processes when
    ``torch.distributed`` is initialised, so every rank trains with the same factor."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # sum, sum of squares, count
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        z = draw_latents(batch, device).double()
        sums += torch.stack([z.sum(), z.pow(2).sum(), torch.tensor(z.numel(), dtype=torch.float64, device=z.device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    total, total_sq, count = sums.tolist()
    if count < 2:
        raise ValueError("cannot compute the latent scale factor: the training loader gave no images")
    std = ((total_sq - total * total / count) / (count - 1)) ** 0.5
    logger.info(f"latent std {std:.6g} over {count:.0f} latent values: scale factor {1.0 / std:.6g}")
    return 1.0 / std


def class_condition(classes: Sequence[str], class_names: Sequence[str], device: torch.device | str | None = None):
    """One-hot cross-attention context ``(B, 1, len(class_names))`` for the class names of a batch."""
    unknown = sorted({c for c in classes if c not in class_names})
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}: the configured class_names are {list(class_names)}")
    index = torch.tensor([list(class_names).index(c) for c in classes], device=device)
    return torch.nn.functional.one_hot(index, len(class_names)).float().unsqueeze(1)


class LatentDiffusionPrepareBatch(DiffusionPrepareBatch):
    """Draw latents from a batch of ``encode_latents`` items, multiply by the scale factor, and return
    ``(latents, noise, (), {"noise", "timesteps"[, "condition"]})`` for ``DiffusionInferer`` (noise prediction).

    With ``class_names`` the batch's ``class`` entries become one-hot contexts, each replaced by the "no class"
    context with probability ``uncond_prob`` (classifier-free guidance training).
    """

    def __init__(
        self,
        scale_factor: ScaleFactor,
        num_train_timesteps: int,
        class_names: Sequence[str] | None = None,
        uncond_prob: float = 0.1,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name="condition" if class_names else None)
        self.scale_factor = scale_factor
        self.class_names = class_names
        self.uncond_prob = uncond_prob

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        latents = draw_latents(batchdata, device)
        batch = {CommonKeys.IMAGE: latents * self.scale_factor.value.to(latents.device)}
        if self.class_names:
            condition = class_condition(batchdata["class"], self.class_names, device)
            drop = torch.rand(condition.shape[0], device=condition.device) < self.uncond_prob
            condition[drop] = UNCONDITIONAL_FILL
            batch["condition"] = condition
        return super().__call__(batch, device, non_blocking, **kwargs)
