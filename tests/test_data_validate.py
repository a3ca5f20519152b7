"""Bad-input checks of `prepare`: every problem is reported with its file, nothing is written, exit code 2."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc.data.options import DataOptions
from mgcc.data.prepare import prepare, prepare_dataset
from mgcc.data.records import DatasetError
from mgcc.data.validate import read_image, read_mask


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _case(root: Path, label: str, k: int, size: tuple[int, int] = (32, 40)) -> tuple[Path, Path]:
    """A small valid image (a dark square on grey) and its 0/255 mask in the BUSI layout."""
    rng = np.random.default_rng(k + 100 * len(label))
    image = rng.integers(90, 200, size=size, dtype=np.uint8)
    mask = np.zeros(size, dtype=np.uint8)
    mask[4:12, 5:15] = 255
    image[mask > 0] //= 4
    folder = root / label
    return _save(image, folder / f"{label} ({k}).png"), _save(mask, folder / f"{label} ({k})_mask.png")


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    for k in range(1, 6):
        _case(root, "benign", k)
        _case(root, "malignant", k)
    return root


def _problems(raw: Path, out: Path, **options) -> list[str]:
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(raw, out, DataOptions(**options))
    assert not out.exists(), "a refused dataset must leave nothing behind"
    return [str(problem) for problem in caught.value.problems]


def test_valid_dataset_prepares(raw, tmp_path):
    summary = prepare_dataset(raw, tmp_path / "out")
    assert summary["images"] == 10 and summary["warnings"] == 0


def test_truncated_png_is_reported_not_skipped(raw, tmp_path):
    image = raw / "benign" / "benign (2).png"
    image.write_bytes(image.read_bytes()[:-40])
    problems = _problems(raw, tmp_path / "out")
    assert len(problems) == 1 and str(image) in problems[0] and "unreadable or truncated image" in problems[0]


def test_file_that_is_not_png_is_reported(raw, tmp_path):
    mask = raw / "malignant" / "malignant (1)_mask.png"
    mask.write_bytes(b"not an image at all")
    problems = _problems(raw, tmp_path / "out")
    assert len(problems) == 1 and str(mask) in problems[0]


def test_image_without_mask_and_mask_without_image(raw, tmp_path):
    (raw / "benign" / "benign (3)_mask.png").unlink()
    (raw / "malignant" / "malignant (4).png").unlink()
    problems = _problems(raw, tmp_path / "out")
    assert any("benign (3).png: image without mask" in problem for problem in problems)
    assert any("malignant (4)_mask.png: mask without image" in problem for problem in problems)


def test_mask_of_another_aspect_ratio_is_refused(raw, tmp_path):
    mask = _save(np.zeros((32, 30), np.uint8), raw / "benign" / "benign (1)_mask.png")
    problems = _problems(raw, tmp_path / "out")
    assert problems == [
        f"{mask}: mask of another size and aspect ratio than its image, so it cannot be resampled to "
        "it (mask vs image, width x height): 30x32 vs 40x32"
    ]


def test_mask_at_another_resolution_is_binarized_then_resampled(raw, tmp_path):
    """A 4x mask with soft edges (another export of the same field of view) lands on the image's grid, counted."""
    big = np.zeros((128, 160), np.uint8)
    big[16:48, 20:60] = 200
    big[15, 20:60] = 60  # a resampled edge below half the maximum: background after binarizing
    _save(big, raw / "benign" / "benign (1)_mask.png")
    summary = prepare_dataset(raw, tmp_path / "out")
    assert summary["resampled_masks"] == 1 and summary["thresholded_masks"] == 1
    mask = np.asarray(Image.open(tmp_path / "out" / "labels" / "benign_0001.png"))
    assert mask.shape == (32, 40)
    expected = np.zeros((32, 40), np.uint8)
    expected[4:12, 5:15] = 255
    assert np.array_equal(mask, expected)
    assert (
        f"{raw / 'benign' / 'benign (1)_mask.png'}: mask resampled to its image's size (nearest, same aspect ratio)"
        in summary["warning_list"]
    )


def test_all_problems_are_reported_together(raw, tmp_path):
    (raw / "benign" / "benign (5).png").write_bytes(b"\x89PNG broken")
    _save(np.zeros((8, 8), np.uint8), raw / "malignant" / "malignant (2)_mask.png")
    (raw / "cyst").mkdir()
    _save(np.zeros((8, 8), np.uint8), raw / "cyst" / "cyst (1).png")
    problems = _problems(raw, tmp_path / "out")
    assert len(problems) == 3
    assert any("unknown class 'cyst'" in problem for problem in problems)


def test_empty_folders_are_refused(tmp_path):
    (tmp_path / "raw").mkdir()
    assert "empty folder" in _problems(tmp_path / "raw", tmp_path / "out")[0]
    (tmp_path / "raw" / "benign").mkdir()
    assert "empty class folder" in _problems(tmp_path / "raw", tmp_path / "out")[0]


@pytest.mark.parametrize("inside", [".", "prepared", "benign"])
def test_output_inside_source_is_refused(raw, inside):
    with pytest.raises(DatasetError, match="must not be inside or equal to the source"):
        prepare_dataset(raw, raw / inside)
    assert sorted(path.name for path in raw.iterdir()) == ["benign", "malignant"]
    assert len(list((raw / "benign").iterdir())) == 10


def test_output_folder_with_foreign_files_is_refused(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        prepare_dataset(raw, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_non_binary_mask_warns_then_binarizes_at_half_its_maximum(raw, tmp_path):
    soft = np.zeros((32, 40), np.uint8)
    soft[4:12, 5:15] = 200
    soft[4, 5:15] = 30  # an anti-aliased edge, below 200 / 2
    path = _save(soft, raw / "benign" / "benign (1)_mask.png")
    summary = prepare_dataset(raw, tmp_path / "out")
    assert any(str(path) in warning and "non-binary mask" in warning for warning in summary["warning_list"])
    label = np.asarray(Image.open(tmp_path / "out" / "labels" / "benign_0001.png"))
    assert set(np.unique(label)) == {0, 255} and (label == 255).sum() == (soft >= 100).sum() == 70
    assert summary["thresholded_masks"] == 1


def test_sixteen_bit_image_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image, notes = read_image(_save(values, tmp_path / "deep.png"))
    assert image.tolist() == [[0, 1, 128, 255]] and "16-bit" in notes[0]


def test_rgb_with_differing_channels_uses_luma(tmp_path):
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (40, 40, 40)
    image, notes = read_image(_save(rgb, tmp_path / "colour.png"))
    assert image.tolist() == [[76, 150, 40]] and "BT.601" in notes[0]


def test_identical_channel_rgb_is_lossless(tmp_path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image, notes = read_image(_save(np.stack([grey] * 3, axis=-1), tmp_path / "grey.png"))
    assert np.array_equal(image, grey) and notes == []


def test_rgba_image_composites_alpha_over_black(tmp_path):
    rgba = np.full((1, 3, 4), 200, np.uint8)
    rgba[0, :, 3] = (255, 51, 0)
    image, notes = read_image(_save(rgba, tmp_path / "alpha.png"))
    assert image.tolist() == [[200, 40, 0]] and "alpha" in notes[0]


def test_palette_image_converts_through_palette(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 90, 90, 90])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png")
    image, notes = read_image(tmp_path / "palette.png")
    assert image.tolist() == [[0, 90]] and "palette" in notes[0]


def test_rgba_and_one_bit_masks_read_as_lesion_where_non_zero(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, :3] = 255
    mask, notes = read_mask(_save(rgba, tmp_path / "rgba_mask.png"))
    assert mask.tolist() == [[True, False], [False, False]] and notes == []
    Image.fromarray(np.array([[0, 1]], np.uint8) * 255).convert("1").save(tmp_path / "bit_mask.png")
    assert read_mask(tmp_path / "bit_mask.png")[0].tolist() == [[False, True]]


def test_cli_exits_with_code_2_and_names_the_file(raw, tmp_path, capsys):
    (raw / "benign" / "benign (4)_mask.png").unlink()
    with pytest.raises(SystemExit) as caught:
        prepare(str(raw), str(tmp_path / "out"))
    assert caught.value.code == 2
    assert "benign (4).png: image without mask" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_other_format_under_png_name_is_reported(raw, tmp_path):
    image = raw / "benign" / "benign (1).png"
    Image.open(image).save(image, format="JPEG")
    problems = _problems(raw, tmp_path / "out")
    assert problems == [f"{image}: not a PNG file (format JPEG)"]


def test_a_mask_threshold_above_the_masks_values_is_refused(raw, tmp_path):
    soft = np.zeros((32, 40), np.uint8)
    soft[4:12, 5:15] = 200
    soft[3, 5:15] = 90
    mask = _save(soft, raw / "benign" / "benign (2)_mask.png")
    problems = _problems(raw, tmp_path / "out", mask_threshold=255)
    assert problems == [f"{mask}: --mask-threshold 255 is above this mask's largest value 200: the mask would be empty"]


def test_blank_images_full_masks_and_disagreeing_duplicates_are_reported(raw, tmp_path):
    blank = _save(np.zeros((32, 40), np.uint8), raw / "benign" / "benign (1).png")
    full = _save(np.full((32, 40), 255, np.uint8), raw / "benign" / "benign (2)_mask.png")
    twin = raw / "malignant" / "malignant (3).png"
    twin.write_bytes((raw / "benign" / "benign (3).png").read_bytes())
    other = np.zeros((32, 40), np.uint8)
    other[20:30, 20:30] = 255
    _save(other, raw / "malignant" / "malignant (3)_mask.png")
    warnings = prepare_dataset(raw, tmp_path / "out")["warning_list"]
    assert (
        f"{blank}: image has 1 gray level(s): blank, or a mask (are the images and masks folders swapped?)" in warnings
    )
    assert f"{full}: mask covers 100% of the image: lesion everywhere?" in warnings
    assert f"{twin}: same pixels as benign (3).png with another class and mask" in warnings


def test_swapped_images_and_masks_leave_nothing_to_train_on(tmp_path):
    for k in range(1, 9):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        _save(mask, tmp_path / "raw" / "images" / f"c{k}.png")  # every "image" is the same mask
        _save(
            np.random.default_rng(k).integers(0, 255, (32, 32), dtype=np.uint8),
            tmp_path / "raw" / "masks" / f"c{k}.png",
        )
    problems = _problems(tmp_path / "raw", tmp_path / "out")
    assert problems == [
        f"{tmp_path / 'raw'}: no image left for training: the 8 images form 1 group(s) of duplicates and near-copies"
    ]
