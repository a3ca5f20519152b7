"""Files that are not what they seem: broken links, renamed masks, images of another format, a spreadsheet for a
CSV. Each test makes the input itself and checks the one line a person can act on (or the right result instead)."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc.data.options import DataOptions
from mgcc.data.prepare import prepare_dataset
from mgcc.data.records import DatasetError


def _pair(image: Path, mask: Path, k: int) -> None:
    """A noisy grey image (no two alike) with a dark lesion, and its 0/255 mask."""
    for path in (image, mask):
        path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(k).integers(90, 200, size=(40, 48), dtype=np.uint8)
    pixels[8:20, 10:30] //= 4
    lesion = np.zeros((40, 48), np.uint8)
    lesion[8:20, 10:30] = 255
    Image.fromarray(pixels).save(image)
    Image.fromarray(lesion).save(mask)


def _busi(root: Path, n: int = 8) -> Path:
    for k in range(1, n + 1):
        label = "benign" if k % 2 else "malignant"
        _pair(root / label / f"{label} ({k}).png", root / label / f"{label} ({k})_mask.png", k)
    return root


@pytest.mark.parametrize("layout", ["busi", "folders"])
def test_a_broken_link_in_a_dataset_is_named_as_one(tmp_path, layout):
    """Before: "not a PNG file; ignored", the wrong cause, and the dataset was prepared without the image."""
    if layout == "busi":
        root = _busi(tmp_path / "raw")
        link = root / "benign" / "benign (99).png"
    else:
        root = tmp_path / "raw"
        for k in range(8):
            _pair(root / "images" / f"c{k}.png", root / "masks" / f"c{k}.png", k)
        link = root / "images" / "c99.png"
    os.symlink(tmp_path / "gone" / "scan.png", link)
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(root, tmp_path / "out", DataOptions())
    message = str(caught.value)
    line = next(line for line in message.splitlines() if "broken link" in line)
    assert link.name in line and "gone/scan.png does not exist" in line, message
    assert "not a PNG" not in message
    assert not (tmp_path / "out").exists()


def test_a_broken_link_among_the_images_to_segment_stops_inference_naming_it(tmp_path):
    """Before: one mask written, rc 0, the linked image never mentioned."""
    from mgcc import SEG_BUNDLE
    from mgcc.bundles import import_bundle_scripts

    scripts = import_bundle_scripts(SEG_BUNDLE)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(folder / "a.png")
    os.symlink(tmp_path / "elsewhere" / "b.png", folder / "b.png")
    with pytest.raises(scripts.data.InputError) as caught:
        scripts.data.inference_datalist(str(folder), output_dir=str(tmp_path / "out"))
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"error: 1 broken link(s) in input_dir {folder}") and "b.png -> " in message
    assert "elsewhere/b.png" in message


@pytest.mark.parametrize("head, kind", [(b"PK\x03\x04", "xlsx or ods"), (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "(xls)")])
def test_a_spreadsheet_given_as_the_class_csv_is_recognised(tmp_path, head, kind):
    """Before: "cannot read class CSV ('utf-8' codec can't decode byte 0x86 ...)"."""
    root = tmp_path / "raw"
    for k in range(8):
        _pair(root / "images" / f"c{k}.png", root / "masks" / f"c{k}.png", k)
    sheet = tmp_path / "classes.csv"
    sheet.write_bytes(head + bytes(range(256)) * 4)
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(root, tmp_path / "out", DataOptions(classes=str(sheet)))
    message = str(caught.value)
    assert f"{sheet}: class CSV is " in message and kind in message and "save the sheet as CSV" in message, message
    assert "codec" not in message


def test_renamed_busi_extra_masks_are_read_as_masks(tmp_path):
    """Before: `benign (1)_mask1.png` and `benign (2)_mask (2).png` were reported as images without masks."""
    from mgcc.data.busi import scan_busi

    root = _busi(tmp_path / "raw")
    extra = np.zeros((40, 48), np.uint8)
    extra[30:36, 30:40] = 255
    Image.fromarray(extra).save(root / "benign" / "benign (1)_mask1.png")
    Image.fromarray(extra).save(root / "benign" / "benign (3)_mask (2).png")
    cases, problems = scan_busi(root)
    assert not problems, [str(p) for p in problems]
    masks = {case.id: sorted(path.name for path in case.masks) for case in cases}
    assert masks["benign_0001"] == ["benign (1)_mask.png", "benign (1)_mask1.png"]
    assert masks["benign_0003"] == ["benign (3)_mask (2).png", "benign (3)_mask.png"]


def test_jpeg_images_beside_png_masks_are_named_as_the_format_problem(tmp_path):
    """Before: "mask without image: 8 files", with no word about the images' format."""
    root = tmp_path / "raw"
    for k in range(8):
        _pair(root / "images" / f"c{k}.png", root / "masks" / f"c{k}.png", k)
        Image.open(root / "images" / f"c{k}.png").save(root / "images" / f"c{k}.jpg")
        (root / "images" / f"c{k}.png").unlink()
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(root, tmp_path / "out", DataOptions())
    assert (
        "images: empty folder: no PNG files (it holds 8 images of another format: 8 .jpg; `mgcc prepare` reads "
        "PNG images and masks: convert them to PNG)"
    ) in str(caught.value)


@pytest.mark.parametrize(
    "name, written",
    [
        ("X.NII.GZ", "X_seg.nii.gz"),
        ("scan.v2.nii.gz", "scan.v2_seg.nii.gz"),
        ("case.v2.png", "case.v2_seg.png"),
        ("Y.PNG", "Y_seg.png"),
    ],
)
def test_masks_are_named_after_the_image_stem_whatever_the_extensions_case(tmp_path, name, written):
    """Before: `X.NII.GZ` was written as `X.NII_seg.png` (MONAI strips a lower-case `.gz` only), while the clash
    check and `predictions.json` said `X_seg.png`; then as `X_seg.png`, its affine and header lost. NIfTI in gives
    NIfTI out, PNG stays PNG, under the name `mask_name` gives (the one `predictions.json` records)."""
    import json

    import nibabel as nib
    import torch
    from monai.data import MetaTensor

    from mgcc import SEG_BUNDLE
    from mgcc.bundles import import_bundle_scripts

    scripts = import_bundle_scripts(SEG_BUNDLE)
    saver = json.loads((SEG_BUNDLE / "configs" / "inference.json").read_text())["postprocessing"]["transforms"][-1]
    assert saver["_target_"] == "scripts.transforms.SaveImageLikeInputd"
    assert saver["output_name_formatter"] == "$scripts.data.mask_name_formatter"
    source = tmp_path / "in" / name
    source.parent.mkdir()
    if name.lower().endswith(".nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros((8, 6), np.uint8), np.diag([0.3, 0.2, 1.0, 1.0])), source)
    save = scripts.transforms.SaveImageLikeInputd(
        keys="pred",
        output_dir=str(tmp_path / "out"),
        output_postfix="seg",
        output_ext=".png",
        output_dtype=np.uint8,
        scale=255,
        resample=False,
        separate_folder=False,
        print_log=False,
        output_name_formatter=scripts.data.mask_name_formatter,
    )
    save({"pred": MetaTensor(torch.ones(1, 8, 6), meta={"filename_or_obj": str(source)})})
    assert [p.name for p in (tmp_path / "out").iterdir()] == [written]
    assert scripts.data.mask_name(name) == written
