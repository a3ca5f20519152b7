"""Code of the ultrasound latent diffusion bundle, imported by its configs as ``scripts.*``."""

from . import diffusion, handlers, losses, sampler, trainer, utils
