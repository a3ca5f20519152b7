"""Autoencoder losses that MONAI core does not provide as such: the KL term and a perceptual loss on a local network."""

from __future__ import annotations

import os

import torch


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(z_mu, z_sigma^2) from N(0, 1), summed over latent elements, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1)
    return kl.flatten(1).sum(1).mean()


def load_feature_network(path: str | None, what: str) -> torch.jit.ScriptModule:
    """A frozen TorchScript feature network from a local file (nothing is downloaded)."""
    if not path:
        raise ValueError(
            f"{what} is enabled but its network weights path is not set: export a feature network with "
            "torch.jit.save (see docs/README.md) and pass its path"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: feature network file not found: {path}")
    try:
        network = torch.jit.load(path, map_location="cpu")
    except RuntimeError as e:
        raise RuntimeError(f"{what}: {path} is not a TorchScript file ({str(e).splitlines()[0]})") from e
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network


class FeaturePerceptualLoss(torch.nn.Module):
    """LPIPS-style distance in the feature space of a pretrained network loaded from a local TorchScript file.

    MONAI's ``PerceptualLoss`` fetches its networks through torchvision, ``lpips`` or ``torch.hub`` (downloads); this
    loss takes any exported network instead (for example a RadImageNet or ImageNet ResNet-50 saved with
    ``torch.jit.save``). The network returns one feature map or a list/tuple of them; each map is normalised to
    unit length over channels and the squared differences are averaged, then summed over maps. The distance is
    computed in float32 also when the network runs under autocast.

    Args:
        weights_path: TorchScript file of the feature network.
        in_channels: channels the network expects; single-channel images are repeated to this number.
    """

    def __init__(self, weights_path: str | None, in_channels: int = 3) -> None:
        super().__init__()
        self.network = load_feature_network(weights_path, "perceptual loss")
        self.in_channels = in_channels

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] != self.in_channels:
            x = x.repeat(1, self.in_channels // x.shape[1], *([1] * (x.ndim - 2)))
        out = self.network(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = input.new_zeros(())
        for f_in, f_tgt in zip(self._features(input.float()), self._features(target.float()), strict=True):
            f_in, f_tgt = f_in.float(), f_tgt.float()
            f_in = f_in / (f_in.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            f_tgt = f_tgt / (f_tgt.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            loss = loss + (f_in - f_tgt).pow(2).sum(1).mean()
        return loss
