"""VAE-GAN training of ``monai.networks.nets.AutoencoderKL`` as a MONAI ``Trainer`` (ignite engine)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer
from monai.losses import PatchAdversarialLoss
from monai.utils import CommonKeys
from torch.optim import Optimizer

from .losses import kl_loss
from .utils import autocast, autocast_dtype


class VaeGanTrainer(Trainer):
    """One iteration: update the autoencoder on L1 + ``kl_weight`` * KL (+ ``perceptual_weight`` * perceptual) loss and,
    once ``adv_warmup_epochs`` epochs are done, + ``adv_weight`` * the patch-adversarial generator loss; then update
    the ``PatchDiscriminator`` on real vs reconstructed images (least-squares patch loss). ``adv_weight`` 0 leaves
    the discriminator out altogether.

    With ``decoder_noise_scale`` s > 0 (noise-augmented decoding; 0, the default, is off) the decoder also decodes
    ``z_mu + s * std_c * eps`` (``std_c``: each latent channel's std over the batch, eps ~ N(0, 1)) and
    ``decoder_noise_weight`` * its L1 to the image joins the loss, so that small errors of a latent model decode
    to small image changes. ``amp`` (``false``, ``true`` or ``auto``, see ``utils.autocast_dtype``) runs the
    networks under bfloat16 autocast; the losses are computed in float32.

    The output dict holds ``image``, ``pred`` (reconstruction) and the float losses ``loss`` (generator total),
    ``recon_loss``, ``kl_loss``, ``noise_recon_loss``, ``perceptual_loss``, ``gen_adv_loss``, ``disc_loss`` for
    handlers.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        g_network: torch.nn.Module,
        g_optimizer: Optimizer,
        d_network: torch.nn.Module,
        d_optimizer: Optimizer,
        recon_loss_function: Callable | None = None,
        adv_loss_function: Callable | None = None,
        perceptual_loss_function: Callable | None = None,
        kl_weight: float = 1e-6,
        adv_weight: float = 0.01,
        perceptual_weight: float = 0.001,
        adv_warmup_epochs: int = 0,
        decoder_noise_scale: float = 0.0,
        decoder_noise_weight: float = 1.0,
        amp: bool | str = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            decollate=False,
        )
        self.g_network, self.g_optimizer = g_network, g_optimizer
        self.d_network, self.d_optimizer = d_network, d_optimizer
        self.recon_loss_function = torch.nn.L1Loss() if recon_loss_function is None else recon_loss_function
        self.adv_loss_function = (
            PatchAdversarialLoss(criterion="least_squares") if adv_loss_function is None else adv_loss_function
        )
        self.perceptual_loss_function = perceptual_loss_function
        self.kl_weight, self.adv_weight, self.perceptual_weight = kl_weight, adv_weight, perceptual_weight
        self.adv_warmup_epochs = adv_warmup_epochs
        if float(decoder_noise_scale) < 0:
            raise ValueError(f"config key 'decoder_noise_scale' must be >= 0, got {decoder_noise_scale!r}")
        self.decoder_noise_scale, self.decoder_noise_weight = float(decoder_noise_scale), float(decoder_noise_weight)
        self.autocast_dtype = autocast_dtype(amp, device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` with the ``amp`` dtype, or nothing (float32)."""
        return autocast(self.autocast_dtype, self.state.device)

    def decode_perturbed(self, z_mu: torch.Tensor) -> torch.Tensor:
        """Decode ``z_mu + decoder_noise_scale * std_c * eps``, ``std_c`` each channel's std over the batch (no
        gradient through it)."""
        std = z_mu.detach().float().transpose(0, 1).flatten(1).std(1)
        std = std.view(1, -1, *([1] * (z_mu.ndim - 2))).to(z_mu.dtype)
        noisy = z_mu + self.decoder_noise_scale * std * torch.randn_like(z_mu)
        return getattr(self.g_network, "module", self.g_network).decode(noisy)

    def _iteration(self, engine: VaeGanTrainer, batchdata: dict) -> dict:
        images = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[0]
        adversarial = engine.adv_weight > 0 and engine.state.epoch > engine.adv_warmup_epochs
        engine.g_network.train()
        engine.d_network.train()

        engine.g_optimizer.zero_grad(set_to_none=True)
        with engine.autocast():
            recon, z_mu, z_sigma = engine.g_network(images)
            noisy = engine.decode_perturbed(z_mu) if engine.decoder_noise_scale > 0 else None
        recon_loss = engine.recon_loss_function(recon.float(), images.float())
        kl = kl_loss(z_mu.float(), z_sigma.float())
        g_loss = recon_loss + engine.kl_weight * kl
        noise_recon = torch.zeros((), device=images.device)
        if noisy is not None:
            noise_recon = engine.recon_loss_function(noisy.float(), images.float())
            g_loss = g_loss + engine.decoder_noise_weight * noise_recon
        perceptual = torch.zeros((), device=images.device)
        if engine.perceptual_loss_function is not None:
            with engine.autocast():
                perceptual = engine.perceptual_loss_function(recon, images).float()
            g_loss = g_loss + engine.perceptual_weight * perceptual
        gen_adv = torch.zeros((), device=images.device)
        if adversarial:
            with engine.autocast():
                logits_fake = engine.d_network(recon.contiguous().float())[-1]
            gen_adv = engine.adv_loss_function(logits_fake.float(), target_is_real=True, for_discriminator=False)
            g_loss = g_loss + engine.adv_weight * gen_adv
        g_loss.backward()
        engine.g_optimizer.step()

        disc_loss = torch.zeros((), device=images.device)
        if adversarial:
            engine.d_optimizer.zero_grad(set_to_none=True)
            # one forward over fakes and reals (one DDP forward per backward; use a per-sample norm in D)
            both = torch.cat([recon.detach(), images]).contiguous().float()
            with engine.autocast():
                logits_fake, logits_real = engine.d_network(both)[-1].float().chunk(2)
            disc_loss = 0.5 * (
                engine.adv_loss_function(logits_fake, target_is_real=False, for_discriminator=True)
                + engine.adv_loss_function(logits_real, target_is_real=True, for_discriminator=True)
            )
            (engine.adv_weight * disc_loss).backward()
            engine.d_optimizer.step()

        return {
            CommonKeys.IMAGE: images,
            CommonKeys.PRED: recon.detach(),
            CommonKeys.LOSS: g_loss.item(),
            "recon_loss": recon_loss.item(),
            "kl_loss": kl.item(),
            "noise_recon_loss": noise_recon.item(),
            "perceptual_loss": perceptual.item(),
            "gen_adv_loss": gen_adv.item(),
            "disc_loss": disc_loss.item(),
        }


class ReconstructionInferer(Inferer):
    """Deterministic reconstruction (decode the posterior mean) of an ``AutoencoderKL``, DDP-wrapped or not."""

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        return getattr(network, "module", network).reconstruct(inputs)
