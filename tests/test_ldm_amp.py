"""Diffusion training under ``amp``: the LDM bundle's ``WeightedDiffusionInferer`` runs the UNet in bfloat16 when
asked and hands the loss a float32 prediction (tiny UNet, no data)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from mgcc import LDM_BUNDLE
from mgcc.bundles import import_bundle_scripts


def predictions(amp):
    scripts = import_bundle_scripts(LDM_BUNDLE)
    torch.manual_seed(0)
    unet = DiffusionModelUNet(
        2, 4, 4, channels=[32, 32], attention_levels=[False, True], num_res_blocks=1, num_head_channels=[0, 32]
    )
    for parameter in unet.parameters():  # MONAI starts the output convolution at zero
        if not parameter.any():
            torch.nn.init.normal_(parameter, std=0.05)
    latents = torch.randn(2, 4, 8, 8)
    noise, timesteps = torch.randn_like(latents), torch.tensor([10, 700])
    inferer = scripts.diffusion.WeightedDiffusionInferer(DDPMScheduler(1000), amp=amp, device="cpu")
    with torch.no_grad():
        return inferer(latents, unet, noise=noise, timesteps=timesteps)


def test_amp_runs_the_unet_in_bfloat16_and_returns_float32():
    plain, bf16 = predictions(False), predictions(True)
    assert bf16.dtype == torch.float32
    assert not torch.equal(plain, bf16), "amp true changed nothing: the UNet did not run under bfloat16"
    torch.testing.assert_close(bf16, plain, atol=0.05, rtol=0.05)


def test_amp_rejects_an_unknown_value():
    with pytest.raises(ValueError, match="'amp' must be true, false or auto"):
        predictions("sometimes")
