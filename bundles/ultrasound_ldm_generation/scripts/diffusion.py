"""Latent diffusion training pieces: the stored latent scale factor, class conditioning, and the batch preparation
that feeds MONAI's ``SupervisedTrainer`` + ``DiffusionInferer`` with latents of the frozen autoencoder."""

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
def compute_scale_factor(
    autoencoder: torch.nn.Module, loader: Iterable, device: torch.device | str, max_batches: int | None = None
) -> float:
    """1 / std of the latents ``autoencoder.encode_stage_2_inputs`` gives for the images of ``loader`` (over all
    processes when ``torch.distributed`` is initialised, so every rank trains with the same factor)."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # sum, sum of squares, count
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        z = getattr(autoencoder, "module", autoencoder).encode_stage_2_inputs(batch[CommonKeys.IMAGE].to(device))
        z = z.double()
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
    """Encode the batch's images with the frozen autoencoder, multiply by the scale factor, and return
    ``(latents, noise, (), {"noise", "timesteps"[, "condition"]})`` for ``DiffusionInferer`` (noise prediction).

    With ``class_names`` the batch's ``class`` entries become one-hot contexts, each replaced by the "no class"
    context with probability ``uncond_prob`` (classifier-free guidance training).
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        scale_factor: ScaleFactor,
        num_train_timesteps: int,
        class_names: Sequence[str] | None = None,
        uncond_prob: float = 0.1,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name="condition" if class_names else None)
        self.autoencoder = autoencoder
        self.scale_factor = scale_factor
        self.class_names = class_names
        self.uncond_prob = uncond_prob

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        images = batchdata[CommonKeys.IMAGE].to(device, non_blocking=non_blocking)
        with torch.no_grad():
            latents = self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor.value.to(images.device)
        batch = {CommonKeys.IMAGE: latents}
        if self.class_names:
            condition = class_condition(batchdata["class"], self.class_names, device)
            drop = torch.rand(condition.shape[0], device=condition.device) < self.uncond_prob
            condition[drop] = UNCONDITIONAL_FILL
            batch["condition"] = condition
        return super().__call__(batch, device, non_blocking, **kwargs)
