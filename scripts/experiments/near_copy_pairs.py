"""BUSI image pairs by thumbnail correlation, to choose and show the near-copy threshold of `mgcc prepare`.

Prints how many images and groups each threshold joins and writes one figure per correlation band (the 12
most correlated pairs in it, side by side), as looked at for docs/data.md.

    python scripts/experiments/near_copy_pairs.py ../shared/data/Dataset_BUSI_with_GT --out docs/images
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mgcc.data.busi import scan_busi
from mgcc.data.split import near_duplicate_groups
from mgcc.data.validate import read_image, thumbnail

BANDS = ((0.92, 0.95), (0.90, 0.92))
TILE = 160


def pair_figure(pairs: list[tuple[float, Path, Path]], path: Path) -> None:
    sheet = Image.new("L", (3 * (2 * TILE + 10), 4 * (TILE + 20)), 255)
    for index, (value, first, second) in enumerate(pairs[:12]):
        x, y = (index % 3) * (2 * TILE + 10), (index // 3) * (TILE + 20)
        for k, source in enumerate((first, second)):
            image = Image.fromarray(read_image(source)[0]).resize((TILE, TILE))
            sheet.paste(image, (x + k * TILE, y + 20))
        ImageDraw.Draw(sheet).text((x + 2, y + 4), f"{value:.3f}  {first.stem} | {second.stem}", fill=0)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("busi", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cases = [case for case in scan_busi(args.busi)[0] if case.label != "normal"]
    thumbnails = np.stack([thumbnail(read_image(case.image)[0]) for case in cases])
    ids = [case.id for case in cases]
    for threshold in (0.97, 0.95, 0.93, 0.92, 0.90, 0.85):
        groups = near_duplicate_groups(ids, thumbnails, threshold)
        print(
            f"threshold {threshold:.2f}: {len(groups)} groups, {sum(map(len, groups))} images, "
            f"largest {max(map(len, groups))}"
        )
    correlation = np.triu(thumbnails @ thumbnails.T, k=1)
    for low, high in BANDS:
        a, b = np.nonzero((correlation >= low) & (correlation < high))
        pairs = sorted(
            ((correlation[i, j], cases[i].image, cases[j].image) for i, j in zip(a, b, strict=True)), reverse=True
        )
        path = args.out / f"busi_near_copies_{low:.2f}-{high:.2f}.png"
        pair_figure(pairs, path)
        print(f"{len(pairs)} pairs in [{low}, {high}): {path}")


if __name__ == "__main__":
    main()
