"""Where the shipped generator's diagonal stripes come from (issue 42): a directional spectrum of real BUSI images, the
autoencoder's reconstructions, the shipped DDIM samples, and decodes of latents changed one channel at a time.

    python scripts/experiments/generator_stripes.py --data outputs/release-2.0-levers/busi \
        --out docs/results/generator-stripes

Measure: each image's mean is removed and a Hann window applied; the power spectrum is averaged over the set; of
the power at radius >= H/8, the share whose frequency vector lies within 15 degrees of the 135-degree diagonal
(`diag135`), and the strongest off-centre peak. Real images have horizontal layers (peak at (8, 0)); the stripes
show as a peak near (13, -7). Writes `<out>.json`, `<out>.md` and `<out>.png` (rows: real, reconstruction, samples,
samples with latent channel 2 blurred, reconstructions of the latent with noise in channel 2 only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Resize
from PIL import Image

from mgcc import LDM_BUNDLE
from mgcc.bundles import importable_as_scripts

IMAGES = 48
SAMPLES = 16
SAMPLED = "DDIM samples (the bundle's scheduler, 50 steps, no clip)"


def power_spectrum(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean power spectrum (centred) of a set of `(N, 1, H, W)` images, each with its mean removed and a Hann window
    applied, and the frequency grids `fy`, `fx` (cycles per image)."""
    a = x[:, 0].double().numpy()
    a = a - a.mean(axis=(1, 2), keepdims=True)
    window = np.outer(np.hanning(a.shape[1]), np.hanning(a.shape[2]))
    power = (np.abs(np.fft.fftshift(np.fft.fft2(a * window), axes=(1, 2))) ** 2).mean(0)
    h, w = power.shape
    fy, fx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    return power, fy, fx


def hf_share(x: torch.Tensor, fraction: float = 0.25) -> float:
    """Share of the set's power (`power_spectrum`) at radius >= `fraction` * H: how much fine texture (speckle) the
    images keep."""
    power, fy, fx = power_spectrum(x)
    return float(power[np.hypot(fy, fx) >= power.shape[0] * fraction].sum() / power.sum())


def spectrum(x: torch.Tensor) -> dict:
    """`diag135` share and strongest peak (fy, fx) of the set's mean power spectrum, radius >= H/8."""
    power, fy, fx = power_spectrum(x)
    h = power.shape[0]
    ring = np.hypot(fy, fx) >= h / 8
    angle = np.degrees(np.arctan2(fy, fx)) % 180
    wedge = ring & (np.minimum(np.abs(angle - 135), 180 - np.abs(angle - 135)) < 15)
    peak = int(np.argmax(np.where(ring & (fy >= 0), power, 0)))
    return {
        "diag135": round(float(power[wedge].sum() / power[ring].sum()), 3),
        "peak": [int(fy.flat[peak]), int(fx.flat[peak])],
    }


def blur(z: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur of each channel of `z` (N, C, H, W)."""
    k = (torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16).expand(z.shape[1], 1, 3, 3)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(z, (1, 1, 1, 1), mode="replicate"), k, groups=z.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an `mgcc prepare` output of BUSI")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = ConfigParser()
    config.read_config(str(LDM_BUNDLE / "configs" / "inference.json"))
    config.update({"bundle_root": str(LDM_BUNDLE), "device": "$torch.device('cpu')"})
    with importable_as_scripts(LDM_BUNDLE):
        autoencoder, unet = config.get_parsed_content("autoencoder"), config.get_parsed_content("network")
        scale, inferer = config.get_parsed_content("scale_factor"), config.get_parsed_content("inferer")
        latent_shape, size = config.get_parsed_content("latent_shape"), config["spatial_size"]
    items = [e for e in json.loads((args.data / "datalist.json").read_text())["training"] if e["class"] != "normal"]
    resize = Resize(size, mode="bilinear", anti_aliasing=True)
    real = torch.stack(
        [
            resize(
                torch.from_numpy(np.asarray(Image.open(args.data / e["image"]).convert("L"), np.float32)[None] / 255)
            )
            for e in items[:IMAGES]
        ]
    ).float()
    decode = lambda z: autoencoder.decode(scale.denormalise(z)).clamp(0, 1)  # noqa: E731
    with torch.no_grad():
        z_mu, z_sigma = autoencoder.encode(real)
        latent = scale.normalise(z_mu)
        x = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(s)) for s in range(SAMPLES)])
        scheduler = inferer.ldm_inferer.scheduler  # the bundle's sampler loop, keeping the final latent
        for t in scheduler.timesteps:
            x, _ = scheduler.step(unet(x, timesteps=torch.full((len(x),), int(t))), t, x)
        sets = {
            "real images": real,
            "reconstructions": decode(latent),
            SAMPLED: decode(x),
        }
        for c in range(latent.shape[1]):
            noisy = latent.clone()
            noisy[:, c] += 0.7 * torch.randn(noisy[:, c].shape)
            sets[f"reconstruction, white noise (std 0.7) in latent channel {c} only"] = decode(noisy)
        for c in range(latent.shape[1]):
            blurred = x.clone()
            blurred[:, c : c + 1] = blur(x[:, c : c + 1])
            sets[f"DDIM samples, latent channel {c} blurred"] = decode(blurred)
    sigma = (z_sigma.mean((0, 2, 3)) * scale.value).tolist()  # the posterior's std in the normalised units
    result = {
        "sets": {name: spectrum(images) for name, images in sets.items()},
        "posterior_std_normalised": [round(s, 3) for s in sigma],
        "latent_std_normalised": [round(s, 3) for s in latent.std((0, 2, 3)).tolist()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| decoded set | diag135 share | strongest peak (fy, fx) |", "|---|---|---|"]
    lines += [f"| {n} | {s['diag135']:.3f} | {tuple(s['peak'])} |" for n, s in result["sets"].items()]
    lines += ["", f"Posterior std per latent channel (normalised units): {result['posterior_std_normalised']}"]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    rows = [real[:8], sets["reconstructions"][:8], sets[SAMPLED][:8]]
    rows += [sets["DDIM samples, latent channel 2 blurred"][:8]]
    grid = torch.cat([torch.cat([torch.nn.functional.pad(t[0], (1, 1, 1, 1)) for t in row], 1) for row in rows], 0)
    picture = Image.fromarray((grid.numpy() * 255).astype(np.uint8))
    picture.resize((picture.width * 3, picture.height * 3), Image.NEAREST).save(f"{args.out}.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
