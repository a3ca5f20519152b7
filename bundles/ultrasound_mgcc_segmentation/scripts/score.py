# Copyright (c) MGCC-MONAI contributors. Licensed under the Apache License, Version 2.0.
"""How unsure the model is about an image: the disagreement of its auxiliary decoders with the main one.

MGCC trains three auxiliary decoders, each fed differently perturbed features, to agree with the main decoder on
unlabeled images. Where they still disagree the model is unsure, which makes the disagreement an uncertainty score
for active learning that costs one forward pass of the four decoders (dropout or test-time-augmentation
uncertainty costs many).

Per pixel: ``d = mean_k (sigmoid(main) - sigmoid(aux_k))^2`` over the auxiliary decoders. Per image: the mean of
``d`` over the predicted lesion region, the pixels that the main decoder or any auxiliary decoder calls lesion
(probability > 0.5), so that a small uncertain lesion is not averaged away by a large sure background; an image
where no decoder sees a lesion is scored by the mean of ``d`` over the whole image (small where all agree).
The perturbations are random: the generator is seeded from ``seed`` and the image's content, so a score does not
depend on the order the images come in.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from PIL import Image

from .data import image_stem

__all__ = ["disagreement", "DisagreementInferer", "DisagreementWriter"]


def disagreement(outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores (B,), maps (B, 1, H, W))`` from ``(main, aux_1, ...)`` logits (see the module docstring)."""
    main, aux = torch.sigmoid(outputs[0].float()), [torch.sigmoid(o.float()) for o in outputs[1:]]
    maps = torch.stack([(main - a).square() for a in aux]).mean(dim=0)
    region = torch.stack([p > 0.5 for p in (main, *aux)]).any(dim=0)
    flat_maps, flat_region = maps.flatten(1), region.flatten(1)
    in_region = (flat_maps * flat_region).sum(1) / flat_region.sum(1).clamp(min=1)
    scores = torch.where(flat_region.any(1), in_region, flat_maps.mean(1))
    return scores, maps


class DisagreementInferer(Inferer):
    """Runs all four decoders (perturbations on, batch norm in eval mode) for the scores and returns the network's
    own logits (with ``flip_tta`` when the network has it on), so the bundle's postprocessing writes the masks
    ``inference.json`` writes; the batch's scores and maps are kept in ``last_scores`` and ``last_maps`` for
    ``DisagreementWriter``.

    Args:
        seed: with each image's content, seeds the perturbations (deterministic scores).
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.memory_format = torch.contiguous_format  # what inference.json converts the network to
        self.last_scores: list[float] = []
        self.last_maps: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        mains, scores, maps = [], [], []
        for image in inputs:  # one generator seed per image
            content = zlib.crc32(image.detach().cpu().float().numpy().tobytes())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + content)
                outputs = network.all_decoders(image[None])
            score, pixel_map = disagreement(outputs)
            mains.append(network(image[None]))
            scores.append(float(score[0]))
            maps.append(pixel_map)
        self.last_scores, self.last_maps = scores, torch.cat(maps)
        return torch.cat(mains)


class DisagreementWriter:
    """An ignite handler: after each iteration, records the scores ``inferer`` kept under the image's file name;
    at the end writes ``<output_dir>/disagreement.json`` (``{"scores": {name: score}, "rule": ...}``, highest
    first) and, with ``save_maps``, ``<output_dir>/<name>_disagreement.png`` (the per-pixel map at the network's
    input size, scaled so that 255 is a squared difference of 0.25)."""

    RULE = (
        "mean over auxiliary decoders of (sigmoid(main) - sigmoid(aux))^2, averaged over the pixels any decoder "
        "calls lesion (p > 0.5), or over the whole image when none does"
    )

    def __init__(self, inferer: DisagreementInferer, output_dir: str, save_maps: bool = False) -> None:
        self.inferer, self.output_dir, self.save_maps = inferer, output_dir, save_maps
        self.scores: dict[str, float] = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, engine) -> None:
        batch = engine.state.batch  # decollated by the evaluator: one dict per image
        items = batch if isinstance(batch, list) else [batch]
        names = [name for item in items for name in np.atleast_1d(item["image"].meta["filename_or_obj"])]
        for index, (name, score) in enumerate(zip(names, self.inferer.last_scores, strict=True)):
            stem = image_stem(name)
            self.scores[stem] = score
            if self.save_maps:
                pixel_map = self.inferer.last_maps[index, 0].detach().cpu().numpy()
                os.makedirs(self.output_dir, exist_ok=True)
                image = np.clip(pixel_map / 0.25 * 255, 0, 255).astype(np.uint8).T  # (W, H) array -> PIL (H, W)
                Image.fromarray(image).save(os.path.join(self.output_dir, f"{stem}_disagreement.png"))

    def write(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        ranked = dict(sorted(self.scores.items(), key=lambda item: -item[1]))
        with open(os.path.join(self.output_dir, "disagreement.json"), "w") as f:
            json.dump({"scores": ranked, "seed": self.inferer.seed, "rule": self.RULE}, f, indent=2)
