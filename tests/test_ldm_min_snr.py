"""Min-SNR loss weighting of the generator's diffusion training (issue 42), on tiny tensors (no data, no bundle
run): the weights per prediction type, and MSE on the weighted prediction and target is the weighted per-sample MSE."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from mgcc import LDM_BUNDLE
from mgcc.bundles import import_bundle_scripts


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alpha_bar = scheduler.alphas_cumprod[timesteps].float()
    return alpha_bar / (1 - alpha_bar)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weight_caps_the_clean_latent_weight_at_gamma(prediction_type):
    scripts = import_bundle_scripts(LDM_BUNDLE)
    scheduler = DDPMScheduler(1000, schedule="scaled_linear_beta", prediction_type=prediction_type)
    timesteps = torch.tensor([0, 10, 100, 500, 999])
    weight = scripts.diffusion.min_snr_weight(scheduler, timesteps, gamma=5.0)
    ratio = snr(scheduler, timesteps)
    # each target's error is the clean latent's error times 1/snr (noise), 1/(snr + 1) (velocity) or 1 (sample)
    per_target = {"epsilon": ratio, "v_prediction": ratio + 1, "sample": torch.ones_like(ratio)}[prediction_type]
    torch.testing.assert_close(weight * per_target, ratio.clamp(max=5.0))
    assert ratio[0] > 5 > ratio[-1]  # both sides of the cap are checked


def test_weighted_prediction_and_target_give_the_weighted_mse():
    scripts = import_bundle_scripts(LDM_BUNDLE)
    scheduler = DDPMScheduler(1000, schedule="scaled_linear_beta", prediction_type="v_prediction")
    z = torch.randn(6, 2, 2, 4, 4, generator=torch.Generator().manual_seed(0))  # (batch, as is + mirrored, c, h, w)
    batch = {"z_mu": z, "z_sigma": torch.zeros_like(z)}
    torch.manual_seed(1)
    latents, target, _, kwargs = scripts.diffusion.LatentDiffusionPrepareBatch(
        scripts.diffusion.ScaleFactor(2), 1000, scheduler=scheduler, min_snr_gamma=5.0
    )(batch)
    network = torch.nn.Conv2d(2, 2, 3, padding=1)
    model = lambda x, timesteps, context=None: network(x)  # noqa: E731  the UNet's call signature
    prediction = scripts.diffusion.WeightedDiffusionInferer(scheduler)(latents, model, **kwargs)
    loss = torch.nn.MSELoss()(prediction, target)

    timesteps, noise = kwargs["timesteps"], kwargs["noise"]
    plain = network(scheduler.add_noise(latents, noise, timesteps))
    velocity = scheduler.get_velocity(latents, noise, timesteps)
    weight = scripts.diffusion.min_snr_weight(scheduler, timesteps, 5.0)
    expected = (weight.view(-1, 1, 1, 1) * (plain - velocity) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(weight, torch.ones_like(weight))


def test_min_snr_gamma_must_be_positive():
    scripts = import_bundle_scripts(LDM_BUNDLE)
    with pytest.raises(ValueError, match="'min_snr_gamma' must be > 0"):
        scripts.diffusion.LatentDiffusionPrepareBatch(
            scripts.diffusion.ScaleFactor(2), 1000, scheduler=DDPMScheduler(1000), min_snr_gamma=0
        )
