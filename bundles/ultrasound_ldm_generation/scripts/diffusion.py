"""Latent diffusion training pieces: latents of the frozen autoencoder computed once, their stored normalisation,
class or lesion-mask conditioning, and the batch preparation that feeds them to MONAI's ``SupervisedTrainer`` +
``DiffusionInferer``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler
from monai.utils import CommonKeys

from .utils import autocast, autocast_dtype

#: fill value of the "no class" context and of the "no mask" channel, the value MONAI's
#: ``DiffusionInferer.sample(cfg=...)`` uses for the unconditioned half
UNCONDITIONAL_FILL = -1.0

logger = logging.getLogger(__name__)


class ScaleFactor(torch.nn.Module):
    """How training latents are normalised before diffusion: ``(z - shift) * value``, per latent channel.

    ``channel`` normalisation (the default) fits each channel's mean and std; ``global`` is the classic LDM scale
    factor (no shift, one 1 / std over all channels), kept to compare with. The buffers go into the diffusion
    checkpoint (entry ``scale_factor``), so resuming and sampling use the trained values. The sampler decodes
    ``z / value + shift``.
    """

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.register_buffer("value", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (z.ndim - 2)
        return (z - self.shift.view(view).to(z)) * self.value.view(view).to(z)

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (z.ndim - 2)
        return z / self.value.view(view).to(z) + self.shift.view(view).to(z)

    def extra_repr(self) -> str:
        return f"value={self.value.tolist()}, shift={self.shift.tolist()}"


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DiffusionSettings:
    """What the diffusion UNet was trained to predict, stored in its checkpoints (entry ``settings``) so that
    sampling and resuming cannot silently use another target. Checkpoints without the entry predate the setting and
    predicted the noise (``epsilon``)."""

    def __init__(self, prediction_type: str = "epsilon") -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"config key 'prediction_type' must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}"
            )
        self.prediction_type = prediction_type

    def state_dict(self) -> dict:
        return {"prediction_type": self.prediction_type}

    def load_state_dict(self, state: dict) -> None:
        if state.get("prediction_type") != self.prediction_type:
            raise ValueError(
                f"the checkpoint being resumed was trained with prediction_type "
                f"{state.get('prediction_type')!r}, the config asks for {self.prediction_type!r}"
            )


def trained_prediction_type(path: str, configured: str | None = None) -> str:
    """The ``prediction_type`` the diffusion checkpoint ``path`` was trained with (``epsilon`` if it predates the
    setting); a ``configured`` value other than null must agree with it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"diffusion checkpoint not found: {path}")
    trained = (
        torch.load(path, map_location="cpu", weights_only=True).get("settings", {}).get("prediction_type", "epsilon")
    )
    if configured is not None and configured != trained:
        raise ValueError(
            f"{path}: trained with prediction_type {trained!r}, but config key 'prediction_type' is "
            f"{configured!r} (leave it null to use the checkpoint's)"
        )
    return trained


class NormalisedLatentAutoencoder(torch.nn.Module):
    """The autoencoder as ``LatentDiffusionInferer`` sees it at sampling: it decodes normalised latents."""

    def __init__(self, autoencoder: torch.nn.Module, scale_factor: ScaleFactor) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.scale_factor = scale_factor

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode_stage_2_outputs(self.scale_factor.denormalise(z))


@torch.no_grad()
def encode_latents(
    autoencoder: torch.nn.Module,
    dataset: Sequence[dict],
    device: torch.device | str,
    batch_size: int = 16,
    masks: bool = False,
) -> list[dict]:
    """Encode every training image once with the frozen autoencoder, as is and mirrored left-right (the training
    augmentation): items ``{"z_mu", "z_sigma"}`` of shape ``(2, C, h, w)`` (index 1 mirrored), plus ``class`` when the
    dataset has one. Diffusion training then draws ``z = z_mu + z_sigma * noise`` per step instead of running the
    encoder on every batch.

    ``masks``: also keep each item's lesion mask at latent size, ``(2, 1, h, w)`` in [0, 1] and mirrored like the
    latents, from its ``label`` (already resized by the dataset's transforms); items without a label (unlabeled
    images) get the "no mask" value ``UNCONDITIONAL_FILL`` everywhere."""
    encoder = getattr(autoencoder, "module", autoencoder)
    items: list[dict] = []
    for start in range(0, len(dataset), batch_size):
        records = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([torch.as_tensor(r[CommonKeys.IMAGE]) for r in records]).to(device)
        z_mu, z_sigma = encoder.encode(torch.cat([images, images.flip(-1)]))
        n = len(records)
        for i, record in enumerate(records):
            item = {
                "z_mu": torch.stack([z_mu[i], z_mu[n + i]]).cpu(),
                "z_sigma": torch.stack([z_sigma[i], z_sigma[n + i]]).cpu(),
            }
            if "class" in record:
                item["class"] = record["class"]
            if masks:
                item["mask"] = latent_mask(record.get(CommonKeys.LABEL), tuple(z_mu.shape[2:]))
            items.append(item)
    labeled = sum(1 for item in items if has_mask(item))
    logger.info(
        f"encoded {len(items)} training images (and their mirrors) into latents of shape {tuple(z_mu.shape[1:])}"
        + (f"; {labeled} with a lesion mask" if masks else "")
    )
    return items


def has_mask(item: dict) -> bool:
    """Whether an ``encode_latents`` item carries a lesion mask (a labeled image), not the "no mask" fill."""
    return "mask" in item and bool(item["mask"].min() >= 0)


def latent_mask(label: torch.Tensor | None, size: tuple[int, ...]) -> torch.Tensor:
    """A label at latent size as ``(2, 1, *size)`` (as is, mirrored), or the "no mask" fill when there is none."""
    if label is None:
        return torch.full((2, 1, *size), UNCONDITIONAL_FILL)
    label = torch.as_tensor(label, dtype=torch.float32).cpu()
    if tuple(label.shape[1:]) != size:
        raise ValueError(f"a lesion mask of spatial size {tuple(label.shape[1:])} does not match the latents' {size}")
    return torch.stack([label, label.flip(-1)])


def repeat_labeled(items: list[dict], repeats: int) -> list[dict]:
    """The ``encode_latents`` items with each labeled one (it has a lesion mask) listed ``repeats`` times, so that a
    mask-conditioned model sees enough masks when few images are labeled (an epoch grows accordingly)."""
    if int(repeats) < 1:
        raise ValueError(f"config key 'labeled_repeats' must be at least 1, got {repeats!r}")
    return items + [item for item in items if has_mask(item)] * (int(repeats) - 1)


def draw_latents(batch: dict, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One posterior sample per item of a batch of ``encode_latents`` items, of a randomly chosen orientation, and
    the lesion masks of the same orientation (``None`` when the items have none)."""
    z_mu, z_sigma = batch["z_mu"].to(device), batch["z_sigma"].to(device)
    rows = torch.arange(z_mu.shape[0], device=z_mu.device)
    pick = torch.randint(0, z_mu.shape[1], (z_mu.shape[0],), device=z_mu.device)
    z_mu, z_sigma = z_mu[rows, pick], z_sigma[rows, pick]
    masks = batch["mask"].to(device)[rows, pick] if "mask" in batch else None
    return z_mu + z_sigma * torch.randn_like(z_sigma), masks


@torch.no_grad()
def fit_scale_factor(
    loader: Iterable, device: torch.device | str, mode: str = "channel", max_batches: int | None = None
) -> ScaleFactor:
    """Fit the latent normalisation to posterior samples of the training latents (``encode_latents`` items), over
    all processes when ``torch.distributed`` is initialised so every rank trains with the same values.
    ``mode``: ``"channel"`` (each channel's mean and std) or ``"global"`` (no shift, 1 / std over all channels)."""
    if mode not in ("channel", "global"):
        raise ValueError(f"config key 'latent_normalisation' must be 'channel' or 'global', got {mode!r}")
    sums = None  # per channel: sum, sum of squares, count
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        z = draw_latents(batch, device)[0].double().transpose(0, 1).flatten(1)
        part = torch.stack([z.sum(1), z.pow(2).sum(1), torch.full_like(z[:, 0], z.shape[1])])
        sums = part if sums is None else sums + part
    if sums is None:
        raise ValueError("cannot fit the latent scale factor: the training loader gave no images")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    if mode == "global":
        sums = sums.sum(1, keepdim=True).expand(-1, sums.shape[1])
    total, total_sq, count = sums
    mean = total / count
    std = ((total_sq - total * mean) / (count - 1)).sqrt()
    scale = ScaleFactor(len(mean))
    scale.value.copy_(1.0 / std)
    if mode == "channel":
        scale.shift.copy_(mean)
    logger.info(f"latent normalisation ({mode}): {scale.extra_repr()}")
    return scale


def class_condition(classes: Sequence[str], class_names: Sequence[str], device: torch.device | str | None = None):
    """One-hot cross-attention context ``(B, 1, len(class_names))`` for the class names of a batch."""
    unknown = sorted({c for c in classes if c not in class_names})
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}: the configured class_names are {list(class_names)}")
    index = torch.tensor([list(class_names).index(c) for c in classes], device=device)
    return torch.nn.functional.one_hot(index, len(class_names)).float().unsqueeze(1)


def min_snr_weight(scheduler: Scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weight of min-SNR weighting (Hang et al., 2023) for the ``scheduler``'s ``prediction_type``:
    ``min(SNR, gamma)`` divided by ``SNR`` (noise), ``SNR + 1`` (velocity) or 1 (clean latent), so that every target
    weighs the clean latent's error by ``min(SNR, gamma)``, ``SNR(t) = alpha_bar_t / (1 - alpha_bar_t)``."""
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    prediction_type = getattr(scheduler, "prediction_type", "epsilon")
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped if prediction_type == "sample" else clipped / snr


class WeightedDiffusionInferer(DiffusionInferer):
    """MONAI's ``DiffusionInferer`` whose training prediction is multiplied by ``loss_weight`` when the batch brings
    one, so that ``MSELoss`` on it and on the equally weighted target is the per-sample weighted loss.

    ``amp`` (``false``, ``true`` or ``auto``, see ``utils.autocast_dtype``) runs the UNet under bfloat16 autocast on
    ``device``; the prediction is returned in float32, so the loss is computed in float32."""

    def __init__(self, scheduler: Scheduler, amp: bool | str = False, device: torch.device | str = "cpu") -> None:
        super().__init__(scheduler)
        self.device = device
        self.autocast_dtype = autocast_dtype(amp, device)

    def __call__(self, *args, loss_weight: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        with autocast(self.autocast_dtype, self.device):
            prediction = super().__call__(*args, **kwargs)
        prediction = prediction.float()
        return prediction if loss_weight is None else prediction * loss_weight


class LatentDiffusionPrepareBatch(DiffusionPrepareBatch):
    """Draw latents from a batch of ``encode_latents`` items, normalise them with the scale factor, and return
    ``(latents, target, (), {"noise", "timesteps"[, "condition", "mode"]})`` for ``DiffusionInferer``. The target
    follows the ``scheduler``'s ``prediction_type``: the noise (``epsilon``), the velocity (``v_prediction``) or
    the clean latents (``sample``).

    With ``class_names`` the batch's ``class`` entries become one-hot contexts (cross-attention); with
    ``mask_conditional`` the items' lesion masks become an extra input channel (``mode="concat"``). Either
    condition is replaced by the "no condition" fill with probability ``uncond_prob`` (classifier-free guidance
    training); unlabeled images have no mask, so they always train the unconditioned model.

    With ``min_snr_gamma`` (``None``: off) the target is multiplied by the square root of ``min_snr_weight``, and
    that square root joins the inferer's arguments as ``loss_weight`` (for ``WeightedDiffusionInferer``).
    """

    def __init__(
        self,
        scale_factor: ScaleFactor,
        num_train_timesteps: int,
        class_names: Sequence[str] | None = None,
        uncond_prob: float = 0.1,
        mask_conditional: bool = False,
        scheduler: Scheduler | None = None,
        min_snr_gamma: float | None = None,
    ) -> None:
        if class_names and mask_conditional:
            raise ValueError(
                "class_conditional and mask_conditional cannot both be true (MONAI's DiffusionInferer "
                "takes one condition: cross-attention or concatenation)"
            )
        condition = class_names or mask_conditional
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name="condition" if condition else None)
        self.scale_factor = scale_factor
        self.class_names = class_names
        self.mask_conditional = mask_conditional
        self.uncond_prob = uncond_prob
        self.scheduler = scheduler
        if min_snr_gamma is not None and (scheduler is None or float(min_snr_gamma) <= 0):
            raise ValueError(f"config key 'min_snr_gamma' must be > 0 and needs the scheduler, got {min_snr_gamma!r}")
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        prediction_type = getattr(self.scheduler, "prediction_type", "epsilon")
        if prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return images if prediction_type == "sample" else noise

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        latents, masks = draw_latents(batchdata, device)
        batch = {CommonKeys.IMAGE: self.scale_factor.normalise(latents)}
        if self.class_names:
            condition = class_condition(batchdata["class"], self.class_names, device)
        elif self.mask_conditional:
            if masks is None:
                raise ValueError("mask_conditional needs latent items with a 'mask' (encode_latents(masks=True))")
            condition = masks
        if self.condition_name:
            drop = torch.rand(condition.shape[0], device=condition.device) < self.uncond_prob
            condition[drop] = UNCONDITIONAL_FILL
            batch["condition"] = condition
        images, target, args, infer_kwargs = super().__call__(batch, device, non_blocking, **kwargs)
        if self.mask_conditional:
            infer_kwargs["mode"] = "concat"
        if self.min_snr_gamma is not None:
            weight = min_snr_weight(self.scheduler, infer_kwargs["timesteps"], self.min_snr_gamma).sqrt()
            weight = weight.view(-1, *([1] * (target.ndim - 1))).to(target)
            target = target * weight
            infer_kwargs["loss_weight"] = weight
        return images, target, args, infer_kwargs
