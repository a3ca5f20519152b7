"""STU-Hospital (another hospital): images and masks in one folder, masks at 400-512 px resampled to the images."""

import json

import numpy as np
from PIL import Image


def test_prepare_stu_resamples_the_masks_to_the_images(prepared_stu):
    manifest = json.loads((prepared_stu / "manifest.json").read_text())
    summary = manifest["summary"]
    assert summary["images"] == 42 and summary["resampled_masks"] == 36  # six masks are already 128x128
    for record in manifest["images"]:
        mask = np.asarray(Image.open(prepared_stu / record["label"]))
        assert mask.shape == (128, 128) and set(np.unique(mask)) == {0, 255}
        assert 0.005 < record["lesion_fraction"] < 0.6
