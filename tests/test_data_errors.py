"""Errors a person can act on in `mgcc prepare`: each test makes the bad input itself and checks the one line
that names the file or option, the exit code 2 and that nothing was written; and the mask threshold."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc import cli
from mgcc.data.datalist import read_json
from mgcc.data.options import DataOptions
from mgcc.data.prepare import prepare_dataset
from mgcc.data.records import DatasetError, Problem, summarized


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _pair(
    image: Path, mask: Path, k: int, size: tuple[int, int] = (40, 48), mask_values: np.ndarray | None = None
) -> None:
    """A grey image with a dark square and its 0/255 mask (or the mask given)."""
    pixels = np.random.default_rng(k).integers(90, 200, size=size, dtype=np.uint8)
    mask_array = np.zeros(size, np.uint8)
    mask_array[8:20, 10:30] = 255
    pixels[mask_array > 0] //= 4
    _save(pixels, image)
    _save(mask_array if mask_values is None else mask_values, mask)


def _busi(root: Path, n: int = 5) -> Path:
    for k in range(1, n + 1):
        _pair(root / "benign" / f"benign ({k}).png", root / "benign" / f"benign ({k})_mask.png", k)
    return root


def _cli_error(argv: list[str], capsys) -> str:
    """Run `mgcc ...`, expect exit code 2, return the error, which must be one line."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    captured = capsys.readouterr()
    assert stopped.value.code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


# 1. --labeled-fraction and --seed


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--labeled-fraction", "0", "--labeled-fraction: 0 is outside (0, 1]: give a fraction such as 0.125 or 1/8"),
        ("--labeled-fraction", "1.5", "--labeled-fraction: 1.5 is outside (0, 1]"),
        (
            "--labeled-fraction",
            "12.5%",
            "--labeled-fraction: '12.5%' is not a fraction in (0, 1] such as 0.125 or 1/8 "
            "(a percentage: for 12.5% give 0.125)",
        ),
        ("--labeled-fraction", "abc", "--labeled-fraction: 'abc' is not a fraction in (0, 1] such as 0.125 or 1/8"),
        ("--labeled-fraction", "1/0", "--labeled-fraction: '1/0' is not a fraction"),
        ("--seed", "abc", "--seed: 'abc' is not a whole number (such as 0 or 42)"),
        ("--seed", "1.5", "--seed: '1.5' is not a whole number"),
    ],
)
def test_a_bad_fraction_or_seed_is_one_line_naming_the_option(tmp_path, capsys, option, value, expected):
    source = _busi(tmp_path / "raw")
    line = _cli_error(["prepare", str(source), str(tmp_path / "out"), option, value], capsys)
    assert line.startswith(f"error: {expected}") and line.endswith("(nothing was written)")
    assert not (tmp_path / "out").exists()


def test_good_fractions_and_seeds_are_accepted(tmp_path, capsys):
    source = _busi(tmp_path / "raw")
    for k, (fraction, seed) in enumerate((("1/8", "7"), ("0.125", 7))):
        cli.main(
            ["prepare", str(source), str(tmp_path / f"out{k}"), "--labeled-fraction", fraction, "--seed", str(seed)]
        )
        settings = json.loads((tmp_path / f"out{k}" / "manifest.json").read_text())["settings"]
        assert settings["labeled_fraction"] == 0.125 and settings["seed"] == 7
    capsys.readouterr()


# 2. --classes is read from the current folder


def _generic(root: Path, n: int = 6) -> Path:
    for k in range(1, n + 1):
        _pair(root / "images" / f"c{k}.png", root / "masks" / f"c{k}.png", k)
    (root / "classes.csv").write_text("image,class\n" + "".join(f"c{k}.png,benign\n" for k in range(1, n + 1)))
    return root


def test_a_relative_class_csv_is_read_from_the_current_folder(tmp_path, monkeypatch):
    source = _generic(tmp_path / "raw")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out", DataOptions(classes="classes.csv"))
    tried = tmp_path / "elsewhere" / "classes.csv"
    assert [str(problem) for problem in caught.value.problems] == [
        f"{tried}: class CSV not found (a relative --classes is read from the current folder, "
        f"{tmp_path / 'elsewhere'}); "
        f"did you mean --classes {source / 'classes.csv'}?"
    ]
    assert len(str(caught.value).splitlines()) == 1 and not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)
    summary = prepare_dataset(source, tmp_path / "out", DataOptions(classes=Path("raw") / "classes.csv"))
    assert summary["classes"] == {"benign": 6}


# 3. layouts


def test_capitalised_images_and_masks_folders_are_the_generic_layout(tmp_path):
    source = tmp_path / "raw"
    for k in range(1, 4):
        _pair(source / "Images" / f"c{k}.png", source / "MASKS" / f"c{k}.png", k)
    summary = prepare_dataset(source, tmp_path / "out")
    assert summary["images"] == 3 and summary["classes"] == {"lesion": 3}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["layout"] == "folders"
    assert manifest["images"][0]["source_image"] == "Images/c1.png" and manifest["images"][0]["source_masks"] == [
        "MASKS/c1.png"
    ]


def test_an_unrecognised_layout_is_one_line_suggesting_the_generic_options(tmp_path, capsys):
    source = tmp_path / "raw"
    for k in range(1, 4):
        _pair(source / "scans" / f"c{k}.png", source / "labels" / f"c{k}.png", k)
    line = _cli_error(["prepare", str(source), str(tmp_path / "out")], capsys)
    assert line.startswith(f"error: {source}: layout not recognised: neither BUSI class folders")
    assert "(found folders labels, scans)" in line and "--images DIR --masks DIR [--image-pattern" in line
    assert "here perhaps --images scans --masks labels" in line and "unknown class" not in line
    assert not (tmp_path / "out").exists()
    cli.main(["prepare", str(source), str(tmp_path / "out"), "--images", "scans", "--masks", "labels"])
    assert "prepared 3 images" in capsys.readouterr().out


# 4. patterns that pair nothing, and many problems with one reason


def test_when_no_image_pairs_with_a_mask_one_line_says_so_and_suggests_the_pattern(tmp_path):
    source = tmp_path / "raw"
    for k in range(1, 13):
        _pair(source / "images" / f"case_{k}.png", source / "masks" / f"case_{k}_mask.png", k)
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out")
    lines = str(caught.value).splitlines()
    assert lines[0] == "25 problem(s) in the dataset, nothing was written:" and len(lines) == 4
    assert lines[1] == (
        f"  {source / 'images'}: no image pairs with a mask (12 images, 12 masks; image pattern '{{id}}.png', "
        "mask pattern '{id}.png'): --mask-pattern '{id}_mask.png' pairs 12 of the 12 masks"
    )
    assert f"  {source / 'images'}: image without mask: 12 files (case_1.png, case_10.png, case_11.png, ...)" in lines
    assert any(line.startswith(f"  {source / 'masks'}: mask without image: 12 files (") for line in lines)
    assert len(caught.value.problems) == 25  # every problem is still in the list
    assert not (tmp_path / "out").exists()
    assert prepare_dataset(source, tmp_path / "out", DataOptions(mask_pattern="{id}_mask.png"))["images"] == 12


def test_no_pairs_without_a_guess_shows_an_example_of_the_options(tmp_path):
    source = tmp_path / "raw"
    for k in range(1, 4):
        _pair(source / "images" / f"img{k}.png", source / "masks" / f"label{k + 10}.png", k)
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(source, tmp_path / "out")
    first = str(caught.value.problems[0])
    assert "no image pairs with a mask (3 images, 3 masks" in first
    assert (
        "give the patterns that pair them, e.g. --image-pattern 'case_{id}.png' --mask-pattern 'case_{id}_mask.png'"
        in first
    )


def test_more_than_five_problems_with_one_reason_are_summarized():
    five = [Problem(Path(f"/data/images/x{k}.png"), "image without mask") for k in range(5)]
    assert summarized(five) == [str(problem) for problem in five]
    six = five + [Problem(Path("/data/images/x5.png"), "image without mask")]
    other = Problem(Path("/data/masks/y.png"), "mask without image")
    assert summarized([other] + six) == [
        str(other),
        "/data/images: image without mask: 6 files (x0.png, x1.png, x2.png, ...)",
    ]


# 5. images too small


def test_an_image_smaller_than_32_pixels_on_a_side_is_refused(tmp_path, capsys):
    source = _busi(tmp_path / "raw")
    _save(np.full((1, 1), 100, np.uint8), source / "benign" / "benign (6).png")
    _save(np.full((1, 1), 255, np.uint8), source / "benign" / "benign (6)_mask.png")
    line = _cli_error(["prepare", str(source), str(tmp_path / "out")], capsys)
    assert (
        line
        == f"error: {source / 'benign' / 'benign (6).png'}: image too small: 1x1 pixels (at least 32 on each side) "
        "(nothing was written)"
    )
    assert not (tmp_path / "out").exists()
    _pair(source / "benign" / "benign (6).png", source / "benign" / "benign (6)_mask.png", 6, size=(31, 200))
    with pytest.raises(DatasetError, match=r"image too small: 200x31 pixels"):
        prepare_dataset(source, tmp_path / "out")
    _pair(source / "benign" / "benign (6).png", source / "benign" / "benign (6)_mask.png", 6, size=(32, 32))
    assert prepare_dataset(source, tmp_path / "out")["images"] == 6


# 6. the mask threshold


def test_a_noisy_mask_gives_the_same_label_as_its_clean_copy(tmp_path, capsys):
    clean = np.zeros((40, 48), np.uint8)
    clean[8:20, 10:30] = 255
    noisy = clean.copy()
    background = clean == 0
    noisy[background] = np.random.default_rng(0).integers(1, 3, size=int(background.sum()))  # JPEG-like 1..2
    noisy[8, 10:30] = 120  # a soft edge, below half of 255
    noisy[19, 10:30] = 200  # and one above
    expected = clean.copy()
    expected[8, 10:30] = 0
    _pair(
        tmp_path / "clean" / "benign" / "benign (1).png",
        tmp_path / "clean" / "benign" / "benign (1)_mask.png",
        1,
        mask_values=expected,
    )
    _pair(
        tmp_path / "noisy" / "benign" / "benign (1).png",
        tmp_path / "noisy" / "benign" / "benign (1)_mask.png",
        1,
        mask_values=noisy,
    )
    for name in ("clean", "noisy"):
        for k in range(2, 5):
            _pair(
                tmp_path / name / "benign" / f"benign ({k}).png",
                tmp_path / name / "benign" / f"benign ({k})_mask.png",
                k,
            )
    summaries = {name: prepare_dataset(tmp_path / name, tmp_path / f"{name}-out") for name in ("clean", "noisy")}
    labels = {
        name: np.asarray(Image.open(tmp_path / f"{name}-out" / "labels" / "benign_0001.png")) for name in summaries
    }
    assert np.array_equal(labels["clean"], labels["noisy"]) and labels["noisy"].max() == 255
    assert summaries["clean"]["thresholded_masks"] == 0 and summaries["noisy"]["thresholded_masks"] == 1
    manifest = json.loads((tmp_path / "noisy-out" / "manifest.json").read_text())
    assert manifest["settings"]["mask_threshold"] is None and manifest["summary"]["thresholded_masks"] == 1
    cli.main(["prepare", str(tmp_path / "noisy"), str(tmp_path / "cli-out")])
    printed = capsys.readouterr()
    assert "non-binary masks binarized at half their maximum value: 1" in printed.out
    assert (
        "warning: non-binary mask (several non-zero values); binarized at half its maximum value: 1 file(s)"
        in printed.err
    )


def test_mask_threshold_chooses_the_level_and_two_valued_masks_keep_any_non_zero(tmp_path, capsys):
    source = _busi(tmp_path / "raw", n=3)
    soft = np.zeros((40, 48), np.uint8)
    soft[8:20, 10:30] = 150
    soft[10:14, 12:16] = 255
    _save(soft, source / "benign" / "benign (1)_mask.png")
    low = np.zeros((40, 48), np.uint8)
    low[8:20, 10:30] = 1  # 0/1, as some BUSI copies: two values, any non-zero pixel is lesion
    _save(low, source / "benign" / "benign (2)_mask.png")
    cli.main(["prepare", str(source), str(tmp_path / "out"), "--mask-threshold", "200"])
    assert "non-binary masks binarized at --mask-threshold 200: 1" in capsys.readouterr().out
    label = np.asarray(Image.open(tmp_path / "out" / "labels" / "benign_0001.png"))
    assert (label == 255).sum() == 16
    assert (np.asarray(Image.open(tmp_path / "out" / "labels" / "benign_0002.png")) == 255).sum() == 240
    settings = json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]
    assert settings["mask_threshold"] == 200
    for value in ("abc", "0", "300"):
        line = _cli_error(["prepare", str(source), str(tmp_path / "other"), "--mask-threshold", value], capsys)
        assert line.startswith("error: --mask-threshold: ") and "mask pixel value" in line
    assert not (tmp_path / "other").exists()


# 7. hand-written JSON


def test_malformed_json_is_one_line_naming_file_line_and_column(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text('{\n  "training": [\n    {"image": "images/ab.png",}\n  ]\n}\n')
    with pytest.raises(DatasetError) as caught:
        read_json(path)
    assert str(caught.value) == (
        f"{path}:3:31: malformed JSON at line 3, column 31: Expecting property name enclosed "
        "in double quotes (nothing was written)"
    )
    path.write_text('{"training": []}')
    assert read_json(path) == {"training": []}


def test_a_broken_manifest_in_a_prepared_folder_names_file_line_and_column(tmp_path):
    from mgcc.data.sources import prepare_any

    folder = tmp_path / "prepared"
    for k in range(1, 4):
        _pair(folder / "images" / f"c{k}.png", folder / "labels" / f"c{k}.png", k)
    (folder / "datalist.json").write_text('{"training": []}\n')
    (folder / "manifest.json").write_text('{\n  "images": [\n    {"image": "images/c1.png",}\n  ]\n}\n')
    with pytest.raises(DatasetError) as caught:
        prepare_any(folder, tmp_path / "out", labeled_fraction=0.125, seed=0, include_normal=False)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and str(folder / "manifest.json") in message
    assert "line 3" in message and "column 31" in message
