"""VAE-GAN training of ``monai.networks.nets.AutoencoderKL`` as a MONAI ``Trainer`` (ignite engine)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer
from monai.losses import PatchAdversarialLoss
from monai.utils import CommonKeys
from torch.optim import Optimizer

from .losses import kl_loss


class VaeGanTrainer(Trainer):
    """One iteration: update the autoencoder on L1 + ``kl_weight`` * KL (+ ``perceptual_weight`` * perceptual) loss and,
    once ``adv_warmup_epochs`` epochs are done, + ``adv_weight`` * the patch-adversarial generator loss; then update
    the ``PatchDiscriminator`` on real vs reconstructed images (least-squares patch loss).

    The output dict holds ``image``, ``pred`` (reconstruction) and the float losses ``loss`` (generator total),
    ``recon_loss``, ``kl_loss``, ``perceptual_loss``, ``gen_adv_loss``, ``disc_loss`` for handlers.
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

    def _iteration(self, engine: VaeGanTrainer, batchdata: dict) -> dict:
        images = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[0]
        adversarial = engine.state.epoch > engine.adv_warmup_epochs
        engine.g_network.train()
        engine.d_network.train()

        engine.g_optimizer.zero_grad(set_to_none=True)
        recon, z_mu, z_sigma = engine.g_network(images)
        recon_loss = engine.recon_loss_function(recon.float(), images.float())
        kl = kl_loss(z_mu, z_sigma)
        g_loss = recon_loss + engine.kl_weight * kl
        perceptual = torch.zeros((), device=images.device)
        if engine.perceptual_loss_function is not None:
            perceptual = engine.perceptual_loss_function(recon, images)
            g_loss = g_loss + engine.perceptual_weight * perceptual
        gen_adv = torch.zeros((), device=images.device)
        if adversarial:
            logits_fake = engine.d_network(recon.contiguous().float())[-1]
            gen_adv = engine.adv_loss_function(logits_fake, target_is_real=True, for_discriminator=False)
            g_loss = g_loss + engine.adv_weight * gen_adv
        g_loss.backward()
        engine.g_optimizer.step()

        disc_loss = torch.zeros((), device=images.device)
        if adversarial:
            engine.d_optimizer.zero_grad(set_to_none=True)
            # one forward over fakes and reals (one DDP forward per backward; use a per-sample norm in D)
            both = torch.cat([recon.detach(), images]).contiguous().float()
            logits_fake, logits_real = engine.d_network(both)[-1].chunk(2)
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
            "perceptual_loss": perceptual.item(),
            "gen_adv_loss": gen_adv.item(),
            "disc_loss": disc_loss.item(),
        }


class ReconstructionInferer(Inferer):
    """Deterministic reconstruction (decode the posterior mean) of an ``AutoencoderKL``, DDP-wrapped or not."""

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        return getattr(network, "module", network).reconstruct(inputs)
