"""Generator autoencoder training options for 2.0 (issue 42): noise-augmented decoding and bfloat16 autocast, on tiny
tensors (no data, no bundle run)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from mgcc import LDM_BUNDLE
from mgcc.bundles import import_bundle_scripts

IMAGES = {"image": torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))}


def trainer(**options):
    """A ``VaeGanTrainer`` of a tiny autoencoder (2 latent channels, 4x4 latents), no adversarial terms."""
    scripts = import_bundle_scripts(LDM_BUNDLE)
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        latent_channels=2,
        channels=[8, 16, 16],
        num_res_blocks=1,
        norm_num_groups=8,
        attention_levels=[False, False, False],
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )
    discriminator = PatchDiscriminator(spatial_dims=2, num_layers_d=1, channels=4, in_channels=1, out_channels=1)
    return scripts.trainer.VaeGanTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[IMAGES],
        g_network=autoencoder,
        g_optimizer=torch.optim.SGD(autoencoder.parameters(), lr=0.0),
        d_network=discriminator,
        d_optimizer=torch.optim.SGD(discriminator.parameters(), lr=0.0),
        kl_weight=1e-3,
        **options,
    )


def iteration(engine, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return engine._iteration(engine, IMAGES)


def spy_on_decode(engine) -> list[torch.Tensor]:
    """Record every latent the autoencoder decodes (its forward's and the trainer's) and the decoded image."""
    calls = []
    decode = engine.g_network.decode

    def recorded(z: torch.Tensor) -> torch.Tensor:
        image = decode(z)
        calls.append((z.detach(), image.detach()))
        return image

    engine.g_network.decode = recorded
    return calls


def test_noisy_decoding_decodes_a_perturbed_mean_latent_and_adds_its_weighted_l1():
    engine = trainer(decoder_noise_scale=0.5, decoder_noise_weight=2.0)
    calls = spy_on_decode(engine)
    out = iteration(engine)
    assert len(calls) == 2  # the posterior sample of forward(), then the perturbed mean
    (noisy, decoded) = calls[1]
    with torch.no_grad():
        z_mu, _ = engine.g_network.encode(IMAGES["image"])
    noise = noisy - z_mu
    expected_std = 0.5 * z_mu.transpose(0, 1).flatten(1).std(1)
    torch.testing.assert_close(noise.transpose(0, 1).flatten(1).std(1), expected_std, rtol=0.35, atol=0)
    noise_l1 = (decoded - IMAGES["image"]).abs().mean().item()
    assert out["noise_recon_loss"] == pytest.approx(noise_l1, rel=1e-5)
    total = out["recon_loss"] + 1e-3 * out["kl_loss"] + 2.0 * out["noise_recon_loss"]
    assert out["loss"] == pytest.approx(total, rel=1e-5)


def test_noisy_decoding_sends_its_gradient_to_the_decoder():
    grads = []
    for scale in (0.0, 0.3):
        engine = trainer(decoder_noise_scale=scale)
        iteration(engine)
        grads.append(torch.cat([p.grad.flatten() for p in engine.g_network.decoder.parameters()]))
    assert not torch.allclose(grads[0], grads[1])


def test_default_is_off_and_gives_the_shipped_loss():
    """Scale 0 (the config default): one decode, no extra random draw, loss = L1 + kl_weight * KL as before."""
    engine = trainer()
    out = iteration(engine)
    after_iteration = torch.rand(1)
    torch.manual_seed(0)
    recon, z_mu, z_sigma = engine.g_network(IMAGES["image"])
    after_forward = torch.rand(1)
    scripts = import_bundle_scripts(LDM_BUNDLE)
    reference = torch.nn.L1Loss()(recon, IMAGES["image"]) + 1e-3 * scripts.losses.kl_loss(z_mu, z_sigma)
    assert out["noise_recon_loss"] == 0.0
    assert out["loss"] == reference.item()
    assert torch.equal(after_iteration, after_forward)
    with pytest.raises(ValueError, match="decoder_noise_scale"):
        trainer(decoder_noise_scale=-0.1)


def test_amp_runs_the_networks_in_bfloat16_and_the_losses_in_float32(monkeypatch):
    scripts = import_bundle_scripts(LDM_BUNDLE)
    engine = trainer(amp=True, decoder_noise_scale=0.3)
    assert engine.autocast_dtype == torch.bfloat16
    calls = spy_on_decode(engine)
    out = iteration(engine)
    assert [image.dtype for _, image in calls] == [torch.bfloat16, torch.bfloat16]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in out.items() if k.endswith("loss"))
    assert trainer().autocast_dtype is None
    for forced, expected in (("1", torch.bfloat16), ("0", None)):
        monkeypatch.setenv("MGCC_CPU_BFLOAT16", forced)
        scripts.utils.cpu_has_native_bfloat16.cache_clear()
        assert scripts.utils.autocast_dtype("auto", "cpu") == expected
    scripts.utils.cpu_has_native_bfloat16.cache_clear()
    assert scripts.utils.autocast_dtype("false", "cpu") is None
    with pytest.raises(ValueError, match="true, false or auto"):
        scripts.utils.autocast_dtype("sometimes", "cpu")
