"""Code of the ultrasound latent diffusion bundle, imported by its configs as ``scripts.*``."""

from . import diffusion, handlers, losses, quality, sampler, trainer, utils

__all__ = ["diffusion", "handlers", "losses", "quality", "sampler", "trainer", "utils"]
