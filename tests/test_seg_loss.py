"""The lesion-aware supervised loss: MONAI's per-image Dice + BCE on lesion images, a real push on lesion-free ones."""

from pathlib import Path

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from mgcc.bundles import import_bundle_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"
LesionAwareDiceCELoss = import_bundle_scripts(BUNDLE).losses.LesionAwareDiceCELoss


def masks(lesion_free: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and masks of 4 images, the given ones emptied."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 32, 32, generator=generator)
    target = (torch.rand(4, 1, 32, 32, generator=generator) > 0.8).float()
    target[lesion_free] = 0
    return logits, target


def test_equals_monai_per_image_dice_ce_on_lesion_images():
    logits, target = masks(lesion_free=[])
    expected = DiceCELoss(sigmoid=True, lambda_ce=0.5)(logits, target)
    assert torch.allclose(LesionAwareDiceCELoss()(logits, target), expected)


def test_a_false_lesion_on_a_lesion_free_image_costs_what_it_would_next_to_a_typical_lesion():
    logits, target = masks(lesion_free=[1])
    loss = LesionAwareDiceCELoss(lambda_ce=0.0)
    predicted = torch.sigmoid(logits[1]).sum()
    area = 0.05 * 32 * 32
    lesion_terms = DiceLoss(sigmoid=True, reduction="none")(logits, target).flatten()
    expected = (lesion_terms[[0, 2, 3]].sum() + predicted / (predicted + area)) / 4
    assert torch.allclose(loss(logits, target), expected)


def test_emptying_a_lesion_free_image_lowers_the_loss_with_a_useful_gradient():
    logits, target = masks(lesion_free=[0, 1, 2, 3])
    per_image = logits.clone().requires_grad_(True)
    DiceLoss(sigmoid=True)(per_image, target).backward()
    logits.requires_grad_(True)
    LesionAwareDiceCELoss(lambda_ce=0.0)(logits, target).backward()
    assert (logits.grad > 0).all()  # every pixel is pushed towards "no lesion"
    # MONAI's per-image soft Dice is flat on an empty mask; this term is not
    assert logits.grad.abs().mean() > 1000 * per_image.grad.abs().mean()


def test_rejects_an_area_outside_the_image():
    with pytest.raises(ValueError, match="empty_area_fraction"):
        LesionAwareDiceCELoss(empty_area_fraction=0)
