"""`mgcc compare` bookkeeping: paired per-image Dice differences between variants."""

import csv

import pytest

from mgcc.compare import differences_table, paired_dice_differences


def write_scores(path, scores: dict[str, float]):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "class", "dice", "iou", "hd95"])
        writer.writeheader()
        for image, dice in scores.items():
            writer.writerow({"image": image, "class": "benign", "dice": dice, "iou": dice, "hd95": 1.0})
    return path


def test_paired_differences_are_per_image_with_an_interval(tmp_path):
    images = [f"img_{i:03d}.png" for i in range(60)]
    base = write_scores(tmp_path / "base.csv", {k: 0.5 for k in images})
    # better on 40 images by 0.2, worse on 20 by 0.1: mean +0.1
    better = write_scores(tmp_path / "better.csv", {k: 0.7 if i < 40 else 0.4 for i, k in enumerate(images)})
    same = write_scores(tmp_path / "same.csv", {k: 0.5 for k in reversed(images)})  # row order does not matter
    result = paired_dice_differences({"base": base, "better": better, "same": same}, "base")
    assert set(result) == {"better", "same"}
    assert result["better"]["mean"] == pytest.approx(0.1)
    assert result["better"]["ci95"][0] < 0.1 < result["better"]["ci95"][1] and result["better"]["ci95"][0] > 0
    assert (result["better"]["better"], result["better"]["worse"], result["better"]["n"]) == (40, 20, 60)
    assert result["same"] == {"mean": 0.0, "ci95": [0.0, 0.0], "n": 60, "better": 0, "worse": 0}
    assert "| better | +0.1000 [" in differences_table(result, "base")


def test_different_test_sets_are_refused(tmp_path):
    base = write_scores(tmp_path / "base.csv", {"a.png": 0.5, "b.png": 0.5})
    other = write_scores(tmp_path / "other.csv", {"a.png": 0.5, "c.png": 0.5})
    with pytest.raises(ValueError, match="other.csv and .*base.csv do not score the same test images"):
        paired_dice_differences({"base": base, "other": other}, "base")
