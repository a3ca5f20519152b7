"""The lesion-rate rule of the pipeline report, and how well a trained model finds the lesion a sample was
generated from."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc.lesions import has_clear_lesion, lesion_rate, mask_agreement


def _disc(size: int, cy: int, cx: int, r: int) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return ((y - cy) ** 2 + (x - cx) ** 2 <= r * r).astype(np.uint8)


def test_one_blob_counts():
    assert has_clear_lesion(_disc(100, 50, 50, 8))
    # a lesion with a few specks around it still counts (specks < 30% of the predicted pixels)
    mask = _disc(100, 50, 50, 8)
    mask[5, 5] = mask[90, 90] = mask[10, 80] = 1
    assert has_clear_lesion(mask)


def test_scattered_blobs_empty_and_tiny_masks_do_not_count():
    scattered = np.zeros((100, 100), np.uint8)
    for cy, cx in [(15, 15), (15, 80), (80, 15), (80, 80), (50, 50)]:
        scattered |= _disc(100, cy, cx, 6)  # each blob > 0.5% of the image, none >= 70% of the blobs
    assert not has_clear_lesion(scattered)  # the largest blob is 20% of the predicted pixels
    assert not has_clear_lesion(np.zeros((100, 100), np.uint8))
    assert not has_clear_lesion(_disc(100, 50, 50, 3))  # 29 px < 0.5% of 10,000


def test_diagonal_pixels_are_one_component():
    mask = np.zeros((20, 20), np.uint8)
    for i in range(20):
        mask[i, i] = 1  # 8-connected line: one component of 20 px = 5% of the image
    assert has_clear_lesion(mask)


def test_lesion_rate_over_png_files(tmp_path):
    Image.fromarray(_disc(64, 32, 32, 10) * 255).save(tmp_path / "a_seg.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "b_seg.png")
    rate = lesion_rate(tmp_path.glob("*_seg.png"))
    assert rate["rate"] == 0.5 and rate["images"] == 2 and rate["with_clear_lesion"] == 1


def test_mask_agreement_compares_each_sample_with_the_mask_it_was_generated_from(tmp_path):
    samples, predictions = tmp_path / "samples", tmp_path / "predictions"
    (samples / "masks").mkdir(parents=True)
    predictions.mkdir()
    records = []
    for name, asked, found in [
        ("a", _disc(64, 32, 32, 10), _disc(64, 32, 32, 10)),
        ("b", _disc(64, 20, 20, 8), np.zeros((64, 64), np.uint8)),
    ]:
        Image.fromarray(asked * 255).save(samples / "masks" / f"{name}.png")
        Image.fromarray(found * 255).save(predictions / f"{name}_seg.png")
        records.append({"file": f"{name}.png", "seed": 0, "label": f"masks/{name}.png"})
    (samples / "manifest.json").write_text(json.dumps({"samples": records}))
    assert mask_agreement(samples, predictions) == {"mean": 0.5, "std": 0.5, "n": 2}  # Dice 1 and 0
    (samples / "manifest.json").write_text(json.dumps({"samples": [{"file": "a.png", "seed": 0}]}))
    assert mask_agreement(samples, predictions) is None  # unconditioned samples


def test_mask_overlay_grid_draws_the_asked_and_the_found_mask(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "mask_overlay_grid.py"
    spec = importlib.util.spec_from_file_location("mask_overlay_grid", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    samples, predictions = tmp_path / "samples", tmp_path / "predictions"
    (samples / "masks").mkdir(parents=True)
    predictions.mkdir()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(samples / "a.png")
    Image.fromarray(_disc(32, 10, 10, 5) * 255).save(samples / "masks" / "a.png")
    Image.fromarray(_disc(32, 22, 22, 5) * 255).save(predictions / "a_seg.png")
    (samples / "manifest.json").write_text(json.dumps({"samples": [{"file": "a.png", "label": "masks/a.png"}]}))
    grid = np.asarray(Image.open(module.overlay_grid(samples, predictions, tmp_path / "grid.png", scale=1)))
    assert grid.shape == (2 * 32 + 2, 32, 3)
    marked = grid[32:64]
    red, green = (marked == (255, 0, 0)).all(-1), (marked == (0, 255, 0)).all(-1)
    assert red[5:16, 5:16].any() and not red[17:, 17:].any()  # the asked-for mask's outline, top left
    assert green[17:28, 17:28].any() and not green[:16, :16].any()  # the found mask's outline, bottom right
    (samples / "manifest.json").write_text(json.dumps({"samples": [{"file": "a.png"}]}))
    with pytest.raises(SystemExit, match="have no masks"):
        module.overlay_grid(samples, None, tmp_path / "x.png")
