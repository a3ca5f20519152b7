# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""MGCC: Multi-Level Global Context Cross Consistency network (Tang et al., arXiv 2305.09447).

A U-shaped network for 2D binary segmentation:

* encoder: five conv blocks (two 3x3 conv + BN + ReLU each), 2x2 max-pool between them, channels
  ``base_channels * (1, 2, 4, 8, 16)`` (64..1024 at the reference full width);
* global context: three ConvMixer stages on the 1/16-resolution bottleneck;
* four decoders of identical structure (main + three auxiliary), each with multi-scale attention gates
  on the skip connections and a 1x1 head producing one logit channel;
* multi-level perturbation (training only): auxiliary decoder ``k`` reads the bottleneck after
  ``aux_levels[k]`` ConvMixer stages, with every feature map it reads (skips and bottleneck) perturbed
  by ``aux_perturbations[k]``. The reference setting is levels ``(0, 1, 2)`` with perturbations
  ``("feature_dropout", "dropout", "feature_noise")``; the single-level cross-consistency baseline (CCT)
  uses levels ``(3, 3, 3)``.

In ``eval()`` mode (and in training with ``train_aux_decoders=False``) only the encoder, the three
ConvMixer stages and the main decoder run, and the network returns one logit map ``(B, 1, H, W)``; with
``flip_tta`` (inference only) that map averages the lesion probabilities of the image and its left-right mirror.
In training mode with auxiliary decoders it returns ``(main, aux_1, aux_2, aux_3)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import flag
from .data import InputError

__all__ = ["MGCCNet", "checked_checkpoint", "feature_noise", "dropout", "feature_dropout", "PERTURBATIONS"]


def feature_noise(x: torch.Tensor, uniform_range: float = 0.3) -> torch.Tensor:
    """Multiplicative uniform noise ``x + x * n`` with ``n ~ U(-r, r)`` of shape ``x.shape[1:]``,
    shared by the samples of the batch (as in the reference implementation)."""
    noise = torch.empty(x.shape[1:], device=x.device, dtype=x.dtype).uniform_(-uniform_range, uniform_range)
    return x + x * noise


def dropout(x: torch.Tensor, p: float = 0.3) -> torch.Tensor:
    """Element-wise dropout with probability ``p`` (always active: it is a training perturbation)."""
    return F.dropout(x, p=p, training=True)


def feature_dropout(x: torch.Tensor, low: float = 0.7, high: float = 0.9) -> torch.Tensor:
    """Drop the spatial positions whose channel-mean activation is ``>= gamma * max`` of that sample,
    with one ``gamma ~ U(low, high)`` drawn per call."""
    attention = x.mean(dim=1, keepdim=True)
    gamma = torch.empty((), device=x.device, dtype=x.dtype).uniform_(low, high)
    threshold = attention.flatten(1).amax(dim=1).view(-1, 1, 1, 1) * gamma
    return x * (attention < threshold).to(x.dtype)


PERTURBATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "feature_noise": feature_noise,
    "dropout": dropout,
    "feature_dropout": feature_dropout,
}


@torch.jit.interface
class FeatureMap(nn.Module):
    """TorchScript interface of the blocks a decoder indexes by level (``forward(input) -> Tensor``)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Sequential's argument name)
        pass


class ConvBlock(nn.Sequential):
    """Two (3x3 conv + BN + ReLU) layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpConv(nn.Sequential):
    """Nearest-neighbour x2 upsampling, then 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class MultiScaleAttentionGate(nn.Module):
    """Multi-scale attention gate: 1x1, 3x3 and dilated 3x3 conv+BN branches, concatenated, ReLU,
    1x1 conv + BN + sigmoid gate ``g``; output ``x + x * g``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pointwise = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))
        self.ordinary = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.dilated = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=2, dilation=2), nn.BatchNorm2d(channels))
        self.vote = nn.Sequential(nn.Conv2d(3 * channels, channels, 1), nn.BatchNorm2d(channels), nn.Sigmoid())

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the FeatureMap interface)
        branches = torch.cat((self.pointwise(input), self.ordinary(input), self.dilated(input)), dim=1)
        gate = self.vote(F.relu(branches))
        return input + input * gate


class ConvMixerLayer(nn.Sequential):
    """residual(depthwise kxk conv -> GELU -> BN), then 1x1 conv -> GELU -> BN."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, groups=channels, padding=kernel_size // 2),
            nn.GELU(),
            nn.BatchNorm2d(channels),
        )
        self.pointwise = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU(), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(x + self.depthwise(x))


class Decoder(nn.Module):
    """Attention-gated skips x1..x4, four up steps (up-conv, concat skip, conv block), 1x1 logit head."""

    def __init__(self, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.gates = nn.ModuleList(MultiScaleAttentionGate(c) for c in channels[:-1])
        self.ups = nn.ModuleList(UpConv(channels[i + 1], channels[i]) for i in range(len(channels) - 1))
        self.convs = nn.ModuleList(ConvBlock(2 * channels[i], channels[i]) for i in range(len(channels) - 1))
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features``: the skips ``x1..x4`` and the bottleneck, shallowest first."""
        x = features[-1]
        for level in range(len(features) - 2, -1, -1):
            gate: FeatureMap = self.gates[level]
            up: FeatureMap = self.ups[level]
            conv: FeatureMap = self.convs[level]
            x = conv.forward(torch.cat((gate.forward(features[level]), up.forward(x)), dim=1))
        return self.head(x)


class MGCCNet(nn.Module):
    """MGCC segmentation network.

    Args:
        in_channels: input channels (1: grayscale ultrasound).
        out_channels: logit channels of every decoder head (1: lesion vs background, sigmoid).
        base_channels: width of the first encoder block; the encoder widths are ``base_channels * 2**i``.
            64 is the reference full width (64..1024).
        convmixer_depth: ConvMixer layers per global-context stage (reference: 3).
        kernel_size: depthwise kernel size of the ConvMixer layers (reference: 7).
        aux_levels: for each auxiliary decoder, how many ConvMixer stages (0..3) precede its input.
        aux_perturbations: for each auxiliary decoder, the perturbation applied to all its input features,
            a key of ``PERTURBATIONS``.
        train_aux_decoders: run the auxiliary decoders in training mode. ``False`` gives the plain network
            used by the supervised-only and mean-teacher baselines (the weights keep the same layout).
        checkpoint_aux: recompute the auxiliary decoders (and their perturbed feature copies) in the
            backward pass instead of storing their activations (``torch.utils.checkpoint``); same result,
            less memory, about one extra auxiliary forward pass of compute.
        flip_tta: in ``eval()`` mode, segment the image and its left-right mirror in one batch and return the logit
            of their mean probability (test-time augmentation: a lesion's side is arbitrary in a B-mode image, its
            depth is not). The mirror flips the first spatial axis, the image's width in MONAI's ``(C, W, H)``
            layout, which the bundle's loaders give. Adds no weights, so it is a setting of the inference configs
            and travels into the exports.
        input_size: the ``spatial_size`` the network is trained at. Kept as the buffer ``input_size`` (so it is
            saved with the weights and travels with them; ``[0, 0]``: not recorded), which
            ``checked_checkpoint`` compares with a config's ``spatial_size`` before the weights are used.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        convmixer_depth: int = 3,
        kernel_size: int = 7,
        aux_levels: Sequence[int] = (0, 1, 2),
        aux_perturbations: Sequence[str] = ("feature_dropout", "dropout", "feature_noise"),
        train_aux_decoders: bool = True,
        checkpoint_aux: bool = False,
        flip_tta: bool = False,
        input_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(base_channels, bool) or float(base_channels) != int(base_channels) or int(base_channels) < 1:
            raise ValueError(f"base_channels must be a whole number >= 1, got {base_channels!r}.")
        base_channels = int(base_channels)
        if isinstance(input_size, (int, float)):  # `--spatial_size 64`: one number for both sides
            input_size = (int(input_size), int(input_size))
        if input_size is not None and (len(input_size) != 2 or any(int(v) % 16 for v in input_size)):
            raise ValueError(f"spatial_size must be two multiples of 16 (e.g. [128, 128]), got {list(input_size)}.")
        if len(aux_levels) != len(aux_perturbations):
            raise ValueError(f"aux_levels {aux_levels} and aux_perturbations {aux_perturbations} differ in length.")
        if any(not 0 <= level <= 3 for level in aux_levels):
            raise ValueError(f"aux_levels must be in 0..3 (ConvMixer stages before the decoder), got {aux_levels}.")
        unknown = set(aux_perturbations) - set(PERTURBATIONS)
        if unknown:
            raise ValueError(f"unknown perturbation(s) {sorted(unknown)}; choose from {sorted(PERTURBATIONS)}.")
        channels = [base_channels * 2**i for i in range(5)]
        self.aux_levels = tuple(int(level) for level in aux_levels)
        self.aux_perturbations = tuple(aux_perturbations)
        self.train_aux_decoders = train_aux_decoders
        self.checkpoint_aux = checkpoint_aux
        self.flip_tta = flag(flip_tta, "flip_tta")  # `--flip_tta false` arrives as the string 'false'

        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out) for c_in, c_out in zip([in_channels, *channels[:-1]], channels, strict=True)
        )
        self.global_context = nn.ModuleList(
            nn.Sequential(*(ConvMixerLayer(channels[-1], kernel_size) for _ in range(convmixer_depth)))
            for _ in range(3)
        )
        self.main_decoder = Decoder(channels, out_channels)
        self.aux_decoders = nn.ModuleList(Decoder(channels, out_channels) for _ in self.aux_levels)
        self.register_buffer("input_size", torch.tensor([int(v) for v in input_size or (0, 0)], dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "input_size", torch.zeros(2, dtype=torch.int64))  # weights saved before 0.4.0
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features ``[x1, x2, x3, x4, x5]`` (x5: the 1/16 bottleneck before the ConvMixers)."""
        if not torch.jit.is_tracing() and (x.shape[-2] % 16 != 0 or x.shape[-1] % 16 != 0):
            raise ValueError(
                f"MGCCNet needs input sizes divisible by 16 (four 2x poolings), got {list(x.shape[-2:])}: "
                "set spatial_size to multiples of 16"
            )
        features: list[torch.Tensor] = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features

    def _aux_decode(self, index: int, *features: torch.Tensor) -> torch.Tensor:
        perturb = PERTURBATIONS[self.aux_perturbations[index]]
        return self.aux_decoders[index]([perturb(f) for f in features])

    def forward(self, x: torch.Tensor):
        """Main logits ``(B, out_channels, H, W)``; in training with auxiliary decoders ``(main, aux_1, ...)``.
        TorchScript compiles the first path only (an exported network is for inference)."""
        if self.flip_tta and not self.training:
            both = self.main_logits(torch.cat([x, x.flip(2)]))
            probability = (torch.sigmoid(both[: x.shape[0]]) + torch.sigmoid(both[x.shape[0] :].flip(2))) / 2
            probability = probability.clamp(1e-6, 1 - 1e-6)
            return torch.log(probability) - torch.log1p(-probability)  # the logit; exports as plain ONNX ops
        if not torch.jit.is_scripting():
            if self.training and self.train_aux_decoders:
                return self._forward_with_aux(x, self.encode(x))
        return self.main_logits(x)

    def main_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The main decoder's logits: encoder, the three ConvMixer stages, main decoder."""
        features = self.encode(x)
        bottleneck = features[-1]
        for stage in self.global_context:
            bottleneck = stage(bottleneck)
        return self.main_decoder(features[:-1] + [bottleneck])

    @torch.jit.unused
    def all_decoders(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(main, aux_1, ...)`` logits with the auxiliary decoders' perturbations on, in any mode (in ``eval()``
        batch norm uses its running statistics): what the decoders' disagreement is measured on."""
        return self._forward_with_aux(x, self.encode(x))

    def _forward_with_aux(self, x: torch.Tensor, features: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        *skips, bottleneck = features
        aux_outputs: list[torch.Tensor] = [x] * len(self.aux_levels)  # placeholders, all replaced below
        for level in range(len(self.global_context) + 1):
            for index in (i for i, lv in enumerate(self.aux_levels) if lv == level):
                if self.checkpoint_aux:
                    aux_outputs[index] = checkpoint(self._aux_decode, index, *skips, bottleneck, use_reentrant=False)
                else:
                    aux_outputs[index] = self._aux_decode(index, *skips, bottleneck)
            if level < len(self.global_context):
                bottleneck = self.global_context[level](bottleneck)
        return (self.main_decoder([*skips, bottleneck]), *aux_outputs)


def checked_checkpoint(path: str, base_channels: int, spatial_size: Sequence[int] | None = None) -> str:
    """``path`` after checking that it is a readable MGCCNet checkpoint of width ``base_channels`` trained at
    ``spatial_size`` (when the checkpoint records it); otherwise ``data.InputError``: one line that names the file
    and the ``base_channels`` or ``spatial_size`` it was trained with, all that ``python -m monai.bundle run``
    prints (exit 1). A missing file is left to the ``CheckpointLoader`` (it names it when it runs), so configs
    parse without a trained model."""
    if not os.path.isfile(path):
        return path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    state = state.get("model", state) if isinstance(state, dict) else state
    first = state.get("encoder.0.0.weight") if isinstance(state, dict) else None
    if first is None:
        raise InputError(f"{path}: not an MGCCNet checkpoint (no 'encoder.0.0.weight' entry)")
    if first.shape[0] != int(base_channels):
        raise InputError(
            f"{path}: trained with base_channels {first.shape[0]}, the config says {base_channels}: "
            f"run with --base_channels {first.shape[0]}"
        )
    trained = [int(v) for v in state.get("input_size", torch.zeros(2)).tolist()]
    if spatial_size is not None and any(trained) and trained != [int(v) for v in spatial_size]:
        raise InputError(
            f"{path}: trained at spatial_size {trained}, the config says {list(spatial_size)}: "
            f'run with --spatial_size "{trained}"'
        )
    return path
