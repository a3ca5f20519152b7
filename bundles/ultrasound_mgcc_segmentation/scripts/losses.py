"""Supervised loss that gives lesion-free images a say without diluting small lesions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LesionAwareDiceCELoss(nn.Module):
    """Soft Dice per image plus binary cross-entropy, for one-channel logits and binary masks.

    On an image with a lesion the Dice term is MONAI's per-image soft Dice loss, so a small lesion counts as much as
    a large one. On a lesion-free image that loss is flat (about 1 whatever is predicted), so it is replaced by
    ``S / (S + A)``: ``S`` the predicted lesion mass (sum of probabilities), ``A`` a typical lesion's area
    (``empty_area_fraction`` of the image). That is the Dice loss the false lesion would cost next to a real lesion of
    area ``A``, as batch Dice gives it, but without letting the batch's large lesions outweigh its small ones.
    """

    def __init__(
        self, empty_area_fraction: float = 0.05, lambda_dice: float = 1.0, lambda_ce: float = 0.5, smooth: float = 1e-5
    ) -> None:
        super().__init__()
        if not 0 < empty_area_fraction <= 1:
            raise ValueError(f"empty_area_fraction must be in (0, 1], got {empty_area_fraction}")
        self.empty_area_fraction = empty_area_fraction
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        prob = torch.sigmoid(logits)
        dims = tuple(range(1, logits.ndim))
        predicted = prob.sum(dims)
        truth = target.sum(dims)
        dice = 1 - (2 * (prob * target).sum(dims) + self.smooth) / (predicted + truth + self.smooth)
        area = self.empty_area_fraction * target[0].numel()
        dice = torch.where(truth > 0, dice, predicted / (predicted + area))
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return self.lambda_dice * dice.mean() + self.lambda_ce * bce
