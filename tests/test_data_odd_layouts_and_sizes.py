"""Odd dataset layouts and sizes (class-folder spellings, masks beside images, tiny or normal-only datasets, a 3D NIfTI
for inference): each test makes the input itself (tiny PNGs in tmp_path) and checks the one line a person can act
on, or the dataset that is prepared instead."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc.data.options import DataOptions
from mgcc.data.prepare import prepare_dataset
from mgcc.data.records import DatasetError

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _pair(
    image: Path, mask: Path, k: int, size: tuple[int, int] = (40, 48), mask_size: tuple[int, int] | None = None
) -> None:
    """A noisy grey image (no two alike) with a dark lesion, and its 0/255 mask (at `mask_size` if given)."""
    pixels = np.random.default_rng(k).integers(90, 200, size=size, dtype=np.uint8)
    pixels[8:20, 10:30] //= 4
    lesion = np.zeros(mask_size or size, np.uint8)
    lesion[8:20, 10:30] = 255
    _save(pixels, image)
    _save(lesion, mask)


def _busi(root: Path, counts: dict[str, int]) -> Path:
    k = 0
    for label, count in counts.items():
        for n in range(1, count + 1):
            k += 1
            _pair(root / label / f"{label} ({n}).png", root / label / f"{label} ({n})_mask.png", k)
    return root


def _one_line(caught: pytest.ExceptionInfo) -> str:
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


# row 1: a 3D NIfTI given to the segmentation bundle's inference


def test_a_3d_nifti_for_inference_is_one_line_naming_the_file_before_the_model_runs(tmp_path):
    """Before: the transform's ValueError surfaced from inside the evaluator as a 229-line traceback."""
    import nibabel as nib

    from mgcc.bundles import import_bundle_scripts

    scripts = import_bundle_scripts(BUNDLE)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(folder / "a.png")
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 1), np.uint8), np.eye(4)), folder / "slice.nii.gz")  # one slice: fine
    assert len(scripts.data.inference_datalist(str(folder), output_dir=str(tmp_path / "out"))) == 2
    volume = folder / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 8), np.uint8), np.eye(4)), volume)
    with pytest.raises(SystemExit) as caught:
        scripts.data.inference_datalist(str(folder), output_dir=str(tmp_path / "out"))
    assert str(caught.value) == (
        f"error: {volume}: a 3D image of 40 x 36 x 8 voxels; the model segments 2D images "
        "(H x W, or H x W x 1/3): give one slice per file"
    )
    volume.unlink()
    normalised = folder / "normalised.nii.gz"  # the gray-level checks too stop the run in one line, not a traceback
    nib.save(nib.Nifti1Image(np.linspace(0, 1, 40 * 36, dtype=np.float32).reshape(40, 36), np.eye(4)), normalised)
    with pytest.raises(
        SystemExit,
        match=f"^error: {normalised}: values 0..1 look normalised to 0..1; the model expects "
        "8-bit gray levels 0..255: multiply by 255 first.$",
    ):
        scripts.data.inference_datalist(str(folder), output_dir=str(tmp_path / "out"))
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    assert "scripts.data.inference_datalist(" in config["dataset"]["data"]  # the check runs when the dataset is made
    assert not (tmp_path / "out").exists()


# row 2: a dataset too small for a validation or test image


def test_a_tiny_dataset_gets_one_validation_image_or_is_refused_with_the_counts(tmp_path):
    """Before: 4 images prepared with an empty validation split (`mgcc run` then failed in the autoencoder)."""
    summary = prepare_dataset(_busi(tmp_path / "four", {"benign": 4}), tmp_path / "out4")
    sections = {name: counts["total"] for name, counts in summary["sections"].items()}
    assert sections == {"training": 1, "unlabeled": 1, "validation": 1, "test": 1}
    summary = prepare_dataset(_busi(tmp_path / "mixed", {"benign": 3, "malignant": 2}), tmp_path / "out5")
    assert summary["sections"]["validation"]["total"] == 1 and summary["sections"]["test"]["total"] >= 1
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(_busi(tmp_path / "two", {"benign": 2}), tmp_path / "out2")
    assert _one_line(caught) == (
        f"{tmp_path / 'two'}: too few images to split: 2 image(s) in 2 group(s) give training 1, "
        "validation 0, test 1; at least 3 images in 3 groups (of duplicates and near-copies) "
        "are needed, one each for training, validation and test (nothing was written)"
    )
    assert not (tmp_path / "out2").exists()


# row 3: only `normal` images without --include-normal


def test_only_normal_images_say_how_many_were_left_out_and_by_which_flag(tmp_path):
    """Before: "no images to prepare", without the count or the flag."""
    source = _busi(tmp_path / "raw", {"normal": 7})
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out")
    assert _one_line(caught) == (
        f"{source}: no images to prepare: 7 images of class 'normal' were left out "
        "(pass --include-normal to keep them) (nothing was written)"
    )
    assert prepare_dataset(source, tmp_path / "out", include_normal=True)["classes"] == {"normal": 7}


# row 4: the reference code's layout, images/ + masks/0/


def test_the_reference_layout_with_masks_in_masks_0_keeps_the_busi_classes(tmp_path):
    """Before: "masks: empty folder"; with --masks masks/0 every image became class `lesion`."""
    source = tmp_path / "raw"
    names = (
        [f"benign ({k}).png" for k in range(1, 5)] + [f"malignant ({k}).png" for k in range(1, 4)] + ["Normal (1).png"]
    )
    for k, name in enumerate(names, start=1):
        _pair(source / "images" / name, source / "masks" / "0" / name, k)
    summary = prepare_dataset(source, tmp_path / "out")
    assert summary["classes"] == {"benign": 4, "malignant": 3} and summary["excluded"] == {"normal": 1}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    first = manifest["images"][0]
    assert first["id"] == "benign_0001" and first["source_masks"] == ["masks/0/benign (1).png"]
    assert prepare_dataset(source, tmp_path / "given", DataOptions(masks="masks/0"))["classes"] == {
        "benign": 4,
        "malignant": 3,
    }
    other = tmp_path / "plain"  # names that carry no class: the generic class, as before
    for k in range(1, 5):
        _pair(other / "images" / f"case{k}.png", other / "masks" / "0" / f"case{k}.png", k)
    assert prepare_dataset(other, tmp_path / "plain-out")["classes"] == {"lesion": 4}


# row 5: class names that differ only in case


def test_class_folders_differing_only_in_case_are_one_line(tmp_path):
    """Before: "unknown class 'Benign'", with no word that `benign/` is the same class."""
    source = _busi(tmp_path / "raw", {"benign": 5})
    for k in range(6, 11):
        _pair(source / "Benign" / f"benign ({k}).png", source / "Benign" / f"benign ({k})_mask.png", k)
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out")
    assert _one_line(caught) == (
        f"{source}: class folders Benign and benign differ only in case: the same class? "
        "move the images of Benign into benign (nothing was written)"
    )


def test_capitalised_class_folders_alone_are_named_with_the_spelling_to_use(tmp_path):
    """Before: "layout not recognised: neither BUSI class folders (benign/, ...)" with no word about the case."""
    source = tmp_path / "raw"
    for label in ("Benign", "Malignant"):
        for k in range(1, 4):
            _pair(source / label / f"{label.lower()} ({k}).png", source / label / f"{label.lower()} ({k})_mask.png", k)
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out")
    assert _one_line(caught) == (
        f"{source}: class folders Benign/, Malignant/: BUSI's class folders are lower case: "
        "rename them benign/, malignant/ (nothing was written)"
    )
    assert not (tmp_path / "out").exists()


def test_class_csv_spellings_differing_only_in_case_are_one_line(tmp_path):
    """Before: one line per row spelled 'Benign' (5 lines here), with no hint."""
    source = tmp_path / "raw"
    for k in range(1, 11):
        _pair(source / "images" / f"c{k}.png", source / "masks" / f"c{k}.png", k)
    csv_path = source / "classes.csv"
    csv_path.write_text(
        "image,class\n" + "".join(f"c{k}.png,{'Benign' if k % 2 else 'benign'}\n" for k in range(1, 11))
    )
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out", DataOptions(classes=csv_path))
    assert _one_line(caught) == (
        f"{csv_path}: classes 'Benign' (5 rows) and 'benign' (5 rows) differ only in case: the "
        "same class? write benign (nothing was written)"
    )


# row 6: masks of another size than their image


def test_many_masks_of_another_size_are_one_line_with_the_count_and_examples(tmp_path):
    """Before: one line per mask (30 lines), since each message held its file name."""
    source = tmp_path / "raw"
    for k in range(1, 31):
        _pair(source / "images" / f"c{k}.png", source / "masks" / f"c{k}.png", k, mask_size=(40, 40))
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out")
    assert _one_line(caught) == (
        f"{source / 'masks'}: mask of another size and aspect ratio than its image, so it cannot "
        "be resampled to it (mask vs image, width x height): 30 files (c1.png 40x40 vs 48x40, "
        "c2.png 40x40 vs 48x40, c3.png 40x40 vs 48x40, ...) (nothing was written)"
    )
    assert len(caught.value.problems) == 30  # every problem is still listed


# row 7: images and masks in one folder without patterns


def test_images_and_masks_in_one_folder_without_a_mask_pattern_say_so(tmp_path):
    """Before: "mask without image: 14 files" (every file read as a mask)."""
    source = tmp_path / "raw"
    for k in range(1, 8):
        _pair(source / "all" / f"c{k}.png", source / "all" / f"c{k}_mask.png", k)
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out", DataOptions(images="all", masks="all"))
    assert _one_line(caught) == (
        f"{source / 'all'}: images and masks are in the same folder: pass --image-pattern and "
        "--mask-pattern to tell them apart, here perhaps --mask-pattern '{id}_mask.png' "
        "(nothing was written)"
    )
    summary = prepare_dataset(
        source, tmp_path / "out", DataOptions(images="all", masks="all", mask_pattern="{id}_mask.png")
    )
    assert summary["images"] == 7


# row 8: the data options as one frozen dataclass


def test_data_options_are_one_frozen_dataclass_checked_once(tmp_path):
    """Before: no `DataOptions` (each option had two names, translated by `_KEYWORDS`); unknown options raised
    SystemExit from library code."""
    from mgcc.data.sources import DATA_OPTIONS, checked_options, prepare_any

    options = checked_options({"images": "scans", "masks": "labels", "mask_pattern": None})
    assert options == {"images": "scans", "masks": "labels"}  # a plain dict of the options given, as before
    data = DataOptions.from_options(options)
    assert (data.images, data.masks, data.layout, data.image_pattern) == ("scans", "labels", "auto", None)
    assert {field.name for field in dataclasses.fields(DataOptions)} >= set(DATA_OPTIONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.images = "other"  # type: ignore[misc]
    with pytest.raises(DatasetError, match=r"^--imgs: unknown data option\(s\) \(options: --layout, --images"):
        checked_options({"imgs": "x"})
    source = tmp_path / "raw"
    for k in range(1, 6):
        _pair(source / "scans" / f"c{k}.png", source / "labels" / f"c{k}.png", k)
    summary = prepare_any(source, tmp_path / "out", labeled_fraction=0.5, seed=0, include_normal=False, options=options)
    assert summary["images"] == 5


def test_phantom_settings_out_of_range_are_a_dataset_error_and_exit_2(tmp_path, capsys):
    """Before: a bare ValueError (a traceback from `mgcc phantom --n 0`)."""
    from mgcc.data.phantom import make_phantom_dataset, phantom

    with pytest.raises(DatasetError, match=r"^--n: phantom needs n >= 1 and size >= 16, got 0"):
        make_phantom_dataset(tmp_path / "ph", n=0, size=32)
    with pytest.raises(SystemExit) as stopped:
        phantom(out=str(tmp_path / "ph"), n=4, size=8)
    assert stopped.value.code == 2 and "--size: phantom needs n >= 1 and size >= 16, got 8" in capsys.readouterr().err
