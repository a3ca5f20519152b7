"""Export a diffusion training checkpoint as the generator bundle's shipped `diffusion.pt` (generator 2.0).

    python scripts/export_diffusion_weights.py --checkpoint <ckpt_dir>/diffusion_snapshot_checkpoint_epoch=300.pt \
        --out bundles/ultrasound_ldm_generation/models/diffusion.pt

Keeps what sampling reads: the EMA weights (`diffusion_ema`, what `inference.json` samples by default) stored in
float16, the latent normalisation (`scale_factor`, float32) and the training settings (`settings`: the prediction
type). The raw weights and the optimiser state stay behind, so the file is a quarter of the checkpoint (a 15.6 M
parameter UNet: 31 MB instead of 125 MB); `diffusion_weights: raw` then stops with an error naming the entries the
file has. float16 keeps 11 significant bits, far finer than the weights' EMA noise; the bundle's quality numbers are
measured on the exported file. Prints the file's SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

KEPT = ("scale_factor", "settings")


def exported(checkpoint: dict) -> dict:
    """The shipped entries of a training checkpoint: float16 EMA weights, normalisation and settings as they are."""
    missing = [key for key in ("diffusion_ema", *KEPT) if key not in checkpoint]
    if missing:
        raise KeyError(f"not a diffusion training checkpoint: no entry {missing} (entries: {sorted(checkpoint)})")
    ema = {name: w.half() if w.is_floating_point() else w for name, w in checkpoint["diffusion_ema"].items()}
    return {"diffusion_ema": ema, **{key: checkpoint[key] for key in KEPT}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.save(exported(torch.load(args.checkpoint, map_location="cpu", weights_only=True)), args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB, sha256 {digest}")


if __name__ == "__main__":
    main()
