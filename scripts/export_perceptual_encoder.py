"""Export the segmentation network's encoder as the generator's perceptual feature network (issue 42, generator 2.0).

    python scripts/export_perceptual_encoder.py --weights bundles/ultrasound_mgcc_segmentation/models/model.pt \
        --out outputs/generator-2.0-prep/perceptual_seg_encoder.ts

Writes a TorchScript module that maps `(N, 1, H, W)` grayscale images in [0, 1] (the generator's layout, H and W
multiples of 16) to the list of the five `MGCCNet.encode` feature maps (widths base, 2, 4, 8, 16 x base; 1, 1/2, ...,
1/16 of the size), batch norm in eval mode; it loads with the generator bundle's `scripts.losses.FeaturePerceptualLoss`
(`perceptual_in_channels` 1). The segmentation bundle reads images as `(C, W, H)` (MONAI's image loaders), the
generator as `(C, H, W)`, so the module transposes each image before the encoder and each feature map back. Only the
encoder's weights are kept. Prints the file's SHA-256; its provenance is stored in the file (`provenance.json`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from mgcc import SEG_BUNDLE
from mgcc.bundles import import_bundle_scripts

#: the parts of MGCCNet that `encode` does not use (dropped before the export)
NOT_ENCODER = ("global_context", "main_decoder", "aux_decoders")


class EncoderFeatures(torch.nn.Module):
    """`MGCCNet.encode` of `(C, H, W)` images: the five feature maps, each in the `(C, H, W)` layout."""

    def __init__(self, network: torch.nn.Module, transpose: bool = True) -> None:
        super().__init__()
        self.network, self.transpose = network, transpose

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.transpose:
            return [f.transpose(-1, -2) for f in self.network.encode(x.transpose(-1, -2))]
        return self.network.encode(x)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def segmentation_state(weights: Path) -> dict[str, torch.Tensor]:
    """The MGCCNet state dict of a segmentation bundle checkpoint (plain, or under `model` as training saves it)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or "encoder.0.0.weight" not in state:
        raise ValueError(f"{weights}: not an MGCCNet checkpoint (no 'encoder.0.0.weight' entry)")
    return state


def encoder_module(state: dict[str, torch.Tensor], transpose: bool = True) -> EncoderFeatures:
    """An `EncoderFeatures` of the MGCCNet in `state` (its width read from the weights), in eval mode."""
    network = import_bundle_scripts(SEG_BUNDLE).network.MGCCNet(base_channels=state["encoder.0.0.weight"].shape[0])
    for name in NOT_ENCODER:
        delattr(network, name)
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    network.encoder.load_state_dict(encoder)
    return EncoderFeatures(network, transpose).eval()


def export(weights: Path, out: Path, size: int = 128, transpose: bool = True) -> str:
    """Trace the encoder of `weights` on a `size` x `size` input, save it to `out`; returns the file's SHA-256."""
    state = segmentation_state(weights)
    module = encoder_module(state, transpose)
    metadata = json.loads((SEG_BUNDLE / "configs" / "metadata.json").read_text())
    provenance = {
        "source": str(weights),
        "source_sha256": sha256_of(weights),
        "segmentation_bundle_version": metadata.get("version"),
        "base_channels": int(state["encoder.0.0.weight"].shape[0]),
        "trained_input_size": [int(v) for v in state.get("input_size", torch.zeros(2)).tolist()],
        "input": "(N, 1, H, W) grayscale in [0, 1], H and W multiples of 16, the generator's (H, W) layout",
        "transposed_for_the_segmentation_layout": transpose,
        "outputs": "list of the 5 MGCCNet.encode feature maps",
    }
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.rand(2, 1, size, size), strict=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out), _extra_files={"provenance.json": json.dumps(provenance, indent=2)})
    return sha256_of(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SEG_BUNDLE / "models" / "model.pt")
    parser.add_argument("--out", type=Path, required=True, help="the .ts file to write (not into a bundle's models/)")
    parser.add_argument("--size", type=int, default=128, help="side of the example input the trace runs on")
    args = parser.parse_args()
    print(f"{export(args.weights, args.out, args.size)}  {args.out}")


if __name__ == "__main__":
    main()
