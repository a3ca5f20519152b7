"""The release model's figure: the first images (by name, not chosen) of each test set with the true lesion
outline (green) and the model's (red), and each image's Dice; with `--mistakes`, two more rows per set: the
lesion-free images where the model drew a lesion (false positives) and the lesion images where its mask misses the
lesion (no overlap), the first of each by name, with their counts (a kind with none is named in the set's title).

Each set is a prepared dataset (`mgcc prepare`) and a folder of the model's `<id>_seg.png` masks for its images
(the segmentation bundle's `inference.json` output).

    python scripts/release_figure.py --set "BUSI test" data/busi test preds/busi \
        --set "STU-Hospital" data/stu all preds/stu --out figure.png [--count 8] [--mistakes]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

TILE = 128
SECTIONS = ("training", "unlabeled", "validation", "test")


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=2)


def _tile(image: Path, truth: Path, prediction: Path) -> tuple[Image.Image, float]:
    gray = Image.open(image).convert("L").resize((TILE, TILE), Image.BILINEAR)
    masks = [
        np.asarray(Image.open(p).convert("L").resize((TILE, TILE), Image.NEAREST)) > 0 for p in (truth, prediction)
    ]
    rgb = np.stack([np.asarray(gray)] * 3, axis=-1)
    rgb[_outline(masks[0])] = (0, 220, 0)
    rgb[_outline(masks[1])] = (255, 40, 40)
    total = masks[0].sum() + masks[1].sum()
    dice = 1.0 if total == 0 else float(2 * (masks[0] & masks[1]).sum() / total)
    return Image.fromarray(rgb), dice


def _masks(truth: Path, prediction: Path) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.asarray(Image.open(p).convert("L")) > 0 for p in (truth, prediction))


def mistakes(cases: list[tuple[Path, Path, Path]]) -> dict[str, list[tuple[Path, Path, Path]]]:
    """The cases (image, truth, prediction) where a lesion is drawn on a lesion-free image, and where a lesion's
    mask does not overlap it."""
    found: dict[str, list] = {"false positive": [], "missed lesion": []}
    for case in cases:
        truth, prediction = _masks(case[1], case[2])
        if not truth.any() and prediction.any():
            found["false positive"].append(case)
        elif truth.any() and not (truth & prediction).any():
            found["missed lesion"].append(case)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", nargs=4, action="append", required=True, metavar=("NAME", "PREPARED", "SECTION", "PREDICTIONS")
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--mistakes", action="store_true", help="add rows of false positives and missed lesions")
    args = parser.parse_args()
    rows = []
    for name, prepared, section, predictions in args.set:
        datalist = json.loads((Path(prepared) / "datalist.json").read_text())
        entries = sorted(
            (e for s in (SECTIONS if section == "all" else (section,)) for e in datalist[s]), key=lambda e: e["image"]
        )
        cases = [
            (
                Path(prepared) / e["image"],
                Path(prepared) / "labels" / f"{Path(e['image']).stem}.png",
                Path(predictions) / f"{Path(e['image']).stem}_seg.png",
            )
            for e in entries
        ]
        found = mistakes(cases) if args.mistakes else {}
        none = "".join(f"; {kind}: none" for kind, cases_of_kind in found.items() if not cases_of_kind)
        rows.append((f"{name}: the first {min(args.count, len(cases))} images by name{none}", cases[: args.count]))
        for kind, cases_of_kind in found.items():
            if cases_of_kind:
                title = f"{name}: {kind}, {len(cases_of_kind)} of {len(cases)} images (the first by name)"
                rows.append((title, cases_of_kind[: args.count]))
    rows = [(title, [_tile(*case) for case in cases]) for title, cases in rows]
    sheet = Image.new("RGB", (args.count * TILE, len(rows) * (TILE + 32)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, tiles) in enumerate(rows):
        top = r * (TILE + 32)
        draw.text((4, top + 2), f"{name}; green truth, red model", fill="black")
        for c, (tile, dice) in enumerate(tiles):
            sheet.paste(tile, (c * TILE, top + 16))
            draw.text((c * TILE + 3, top + 18 + TILE - 14), f"Dice {dice:.2f}", fill="yellow")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
