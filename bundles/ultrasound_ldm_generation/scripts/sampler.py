"""Sampling synthetic images as a MONAI evaluator: the dataset is the sample plan (one seed per image), the inferer
runs DDIM with classifier-free guidance through ``LatentDiffusionInferer``, and a handler writes PNGs + manifest.
A mask-conditioned model generates each image from a lesion mask: a labeled training mask, moved by a random
affine drawn from the sample's seed; the mask is written beside the image, so the pair is a labeled sample."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer, LatentDiffusionInferer
from monai.transforms import Compose
from PIL import Image

from .diffusion import NormalisedLatentAutoencoder, ScaleFactor, class_condition
from .utils import labeled_items, to_uint8


def sample_plan(
    num_samples: int,
    seed: int,
    class_conditional: bool = False,
    class_names: Sequence[str] = (),
    sample_class: str | None = None,
    mask_sources: Sequence[str] | None = None,
) -> list[dict]:
    """``num_samples`` items ``{"file", "seed", "class"}``; sample ``i`` uses seed ``seed + i`` (so any batch size
    gives the same images). Conditional: every sample of ``sample_class``, or the classes in turn when it is null.
    ``mask_sources`` (a mask-conditioned model): each item also gets ``mask_source``, one of these label files
    drawn with its seed."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if sample_class is not None and not class_conditional:
        raise ValueError(f"sample_class={sample_class!r} needs a class-conditional model (class_conditional=true)")
    if sample_class is not None and sample_class not in class_names:
        raise ValueError(f"sample_class={sample_class!r} is not one of class_names {list(class_names)}")
    if mask_sources is not None and not mask_sources:
        raise ValueError("mask_conditional=true needs labeled images: the datalist's 'training' section lists no label")
    plan = [{"file": f"sample_{i:05d}.png", "seed": seed + i} for i in range(num_samples)]
    if class_conditional:  # no "class" key at all otherwise: the data loader cannot collate None
        for i, item in enumerate(plan):
            item["class"] = sample_class or class_names[i % len(class_names)]
    if mask_sources is not None:
        for item in plan:
            item["mask_source"] = mask_sources[int(np.random.default_rng(item["seed"]).integers(len(mask_sources)))]
    return plan


def mask_sources(mask_dir: str | None, datalist: str) -> list[str]:
    """The masks a mask-conditioned model generates from: the PNGs of ``mask_dir`` in name order (a packaged
    generator carries its run's masks there), else the labels of the datalist's ``training`` section in its order."""
    if mask_dir:
        masks = (
            sorted(os.path.join(mask_dir, f) for f in os.listdir(mask_dir) if f.lower().endswith(".png"))
            if os.path.isdir(mask_dir)
            else []
        )
        if not masks:
            raise FileNotFoundError(f"mask_dir {mask_dir}: no mask PNGs to generate from")
        return masks
    return [item["label"] for item in labeled_items(datalist)]


class SamplingPrepareBatch:
    """Batch of plan items -> ``(noise, masks, (), {"conditioning", "mode"})``; the noise of each item is drawn from
    its own seed on the CPU, so results do not depend on batch size or device RNG state.

    Class-conditional: ``conditioning`` is the one-hot class context (cross-attention). Mask-conditional
    (``mask_transform``, which loads an item's ``mask_source`` at image size and moves it randomly): the transform's
    random state is the item's seed; the masks are returned as the target (the writer saves them) and, resized to
    the latent size by area, become the extra input channel (``mode="concat"``).
    """

    def __init__(
        self,
        latent_shape: Sequence[int],
        class_names: Sequence[str] | None = None,
        mask_transform: Compose | None = None,
    ) -> None:
        self.latent_shape = list(latent_shape)
        self.class_names = class_names
        self.mask_transform = mask_transform

    def masks(self, batchdata: dict) -> torch.Tensor:
        masks = []
        for source, seed in zip(batchdata["mask_source"], batchdata["seed"], strict=True):
            self.mask_transform.set_random_state(seed=int(seed))
            masks.append(torch.as_tensor(self.mask_transform({"label": source})["label"]).float())
        return (torch.stack(masks) > 0.5).float()

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        noise = torch.stack(
            [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in batchdata["seed"]]
        ).to(device)
        if self.mask_transform is not None:
            masks = self.masks(batchdata).to(device)
            conditioning = torch.nn.functional.interpolate(masks, size=self.latent_shape[1:], mode="area")
            return noise, masks, (), {"conditioning": conditioning, "mode": "concat"}
        conditioning = class_condition(batchdata["class"], self.class_names, device) if self.class_names else None
        return noise, None, (), {"conditioning": conditioning}


class LatentSamplingInferer(Inferer):
    """Denoise latent noise with ``diffusion`` (the evaluator's network) through a ``LatentDiffusionInferer``, undo
    the trained latent normalisation ``scale_factor`` and decode with ``autoencoder``; guidance when conditioned."""

    def __init__(
        self,
        ldm_inferer: LatentDiffusionInferer,
        autoencoder: torch.nn.Module,
        scale_factor: ScaleFactor,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if ldm_inferer.scale_factor != 1.0:
            raise ValueError("the latent normalisation is applied through scale_factor; set the inferer's to 1.0")
        self.ldm_inferer = ldm_inferer
        self.autoencoder = NormalisedLatentAutoencoder(autoencoder, scale_factor)
        self.guidance_scale = guidance_scale
        ldm_inferer.scheduler.set_timesteps(num_inference_steps=num_inference_steps)

    def __call__(
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        *args,
        conditioning=None,
        mode: str = "crossattn",
        **kwargs,
    ):
        cfg = self.guidance_scale if conditioning is not None and self.guidance_scale != 1.0 else None
        return self.ldm_inferer.sample(
            input_noise=inputs,
            autoencoder_model=self.autoencoder,
            diffusion_model=network,
            conditioning=conditioning,
            mode=mode,
            cfg=cfg,
            verbose=False,
        )


class SampleWriter:
    """Write each generated image as an 8-bit grayscale PNG into ``sample_dir`` (and the mask it was generated from,
    if any, into ``sample_dir/masks/``) and, when the run completes, ``sample_dir/manifest.json`` =
    ``{"settings": settings, "samples": [{"file", "seed", "class"[, "label", "mask_source"]}, ...]}``."""

    def __init__(self, sample_dir: str, settings: dict) -> None:
        self.sample_dir = sample_dir
        self.settings = settings
        self.samples: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _start(self, engine: Engine) -> None:
        os.makedirs(self.sample_dir, exist_ok=True)
        self.samples = []

    def _write(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output, strict=True):
            Image.fromarray(to_uint8(output["pred"])).save(os.path.join(self.sample_dir, item["file"]))
            record = {"file": item["file"], "seed": int(item["seed"]), "class": item.get("class")}
            if output.get("label") is not None:
                record["label"] = os.path.join("masks", item["file"])
                record["mask_source"] = os.path.basename(item["mask_source"])
                os.makedirs(os.path.join(self.sample_dir, "masks"), exist_ok=True)
                Image.fromarray(to_uint8(output["label"])).save(os.path.join(self.sample_dir, record["label"]))
            self.samples.append(record)

    def _finish(self, engine: Engine) -> None:
        manifest = {"settings": self.settings, "samples": sorted(self.samples, key=lambda s: s["file"])}
        with open(os.path.join(self.sample_dir, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
