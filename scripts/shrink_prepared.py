"""Copy a prepared dataset with every image and label resized to SIZE x SIZE (labels: nearest neighbour).

A one-off tool for shipping BUSI to a GPU machine whose transfer limit is smaller than the dataset. The
segmentation and generation bundles resize to their `spatial_size` anyway; with SIZE equal to it the
networks see the same pixels up to interpolation order. Metrics are computed at the evaluated size.

    python scripts/shrink_prepared.py PREPARED OUT --size 256
"""

import argparse
import shutil
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    for name in ("datalist.json", "manifest.json"):
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.prepared / name, args.out / name)
    for folder, resample in (("images", Image.BILINEAR), ("labels", Image.NEAREST)):
        (args.out / folder).mkdir(exist_ok=True)
        for src in sorted((args.prepared / folder).glob("*.png")):
            Image.open(src).resize((args.size, args.size), resample).save(args.out / folder / src.name)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
