"""Grid of mask-conditioned samples: each sample as generated, then with the mask it was generated from (red) and,
if given, the trained model's mask (green). The first N samples of the manifest (chosen by seed, not by hand).

    python scripts/mask_overlay_grid.py --samples OUT/sample/images [--predictions OUT/lesions/synthetic] \
        --out figure.png [--count 16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def overlay_grid(
    samples: Path, predictions: Path | None, out: Path, count: int = 16, columns: int = 8, scale: int = 2
) -> Path:
    records = json.loads((samples / "manifest.json").read_text())["samples"][:count]
    if not records or not all(r.get("label") for r in records):
        raise SystemExit(f"{samples}/manifest.json: the samples have no masks (not a mask-conditioned generator)")
    tiles = []
    for record in records:
        image = np.asarray(Image.open(samples / record["file"]).convert("L"))
        rgb = np.stack([image] * 3, -1)
        marked = rgb.copy()
        marked[outline(np.asarray(Image.open(samples / record["label"])) > 0)] = (255, 0, 0)
        if predictions is not None:
            found = np.asarray(Image.open(predictions / f"{Path(record['file']).stem}_seg.png")) > 0
            marked[outline(found)] = (0, 255, 0)
        tiles.append(np.concatenate([rgb, marked], 0))
    rows = [np.concatenate(tiles[i : i + columns], 1) for i in range(0, len(tiles), columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = np.concatenate(rows, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True, help="sample folder with manifest.json")
    parser.add_argument("--predictions", type=Path, help="folder of <stem>_seg.png masks of the trained model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args()
    print(overlay_grid(args.samples, args.predictions, args.out, args.count))


if __name__ == "__main__":
    main()
