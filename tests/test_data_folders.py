"""The generic layout: an images folder and a masks folder paired by name patterns, classes from a CSV."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc.data.folders import pattern_regex
from mgcc.data.options import DataOptions
from mgcc.data.prepare import prepare_dataset
from mgcc.data.records import DatasetError
from mgcc.data.sources import prepare_any


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def generic(tmp_path) -> Path:
    """Ten cases: images/case_000k.png with masks/mask_000k.png."""
    root = tmp_path / "generic"
    for k in range(1, 11):
        image = np.random.default_rng(k).integers(60, 200, (40, 60), dtype=np.uint8)
        mask = np.zeros((40, 60), np.uint8)
        mask[5 : 5 + k, 4:12] = 255
        _save(image, root / "images" / f"case_{k:04d}.png")
        _save(mask, root / "masks" / f"mask_{k:04d}.png")
    return root


def _classes_csv(root: Path, rows: list[tuple[str, str]]) -> Path:
    path = root / "classes.csv"
    path.write_text("image,class\n" + "".join(f"{name},{label}\n" for name, label in rows))
    return path


def test_pattern_pairs_images_and_masks(generic, tmp_path):
    summary = prepare_dataset(
        generic, tmp_path / "out", DataOptions(image_pattern="case_{id}.png", mask_pattern="mask_{id}.png")
    )
    assert summary["images"] == 10 and summary["classes"] == {"lesion": 10}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    record = next(record for record in manifest["images"] if record["id"] == "case_0003")
    assert record["source_image"] == "images/case_0003.png" and record["source_masks"] == ["masks/mask_0003.png"]
    assert record["lesion_fraction"] == round(3 * 8 / 2400, 6)


def test_same_names_need_no_pattern(tmp_path):
    for k in range(1, 4):
        _save(np.full((32, 32), 9 * k, np.uint8), tmp_path / "raw" / "images" / f"scan{k}.png")
        _save(np.zeros((32, 32), np.uint8), tmp_path / "raw" / "masks" / f"scan{k}.png")
    summary = prepare_dataset(tmp_path / "raw", tmp_path / "out")
    assert summary["images"] == 3 and sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        "scan0001.png",
        "scan0002.png",
        "scan0003.png",
    ]


def test_wildcard_mask_pattern_merges_several_masks(tmp_path):
    _save(np.full((32, 32), 100, np.uint8), tmp_path / "raw" / "img" / "a.png")
    first, second = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    first[0, 0], second[9, 9] = 255, 1
    _save(first, tmp_path / "raw" / "gt" / "a_mask.png")
    _save(second, tmp_path / "raw" / "gt" / "a_mask_1.png")
    for name, value in (("b", 110), ("c", 120)):  # three images: one each for training, validation and test
        _save(np.full((32, 32), value, np.uint8), tmp_path / "raw" / "img" / f"{name}.png")
        _save(first, tmp_path / "raw" / "gt" / f"{name}_mask.png")
    prepare_dataset(
        tmp_path / "raw", tmp_path / "out", DataOptions(images="img", masks="gt", mask_pattern="{id}_mask*.png")
    )
    label = np.asarray(Image.open(tmp_path / "out" / "labels" / "a.png"))
    assert label[0, 0] == label[9, 9] == 255 and (label > 0).sum() == 2


def test_classes_from_csv(generic, tmp_path):
    rows = [(f"case_{k:04d}.png", "benign" if k <= 6 else "malignant") for k in range(1, 11)]
    summary = prepare_dataset(
        generic,
        tmp_path / "out",
        DataOptions(image_pattern="case_{id}.png", mask_pattern="mask_{id}.png", classes=_classes_csv(generic, rows)),
    )
    assert summary["classes"] == {"benign": 6, "malignant": 4}


def test_csv_problems_are_reported(generic, tmp_path):
    rows = [(f"case_{k:04d}.png", "benign") for k in range(1, 9)] + [
        ("case_0009.png", "cyst"),
        ("case_0042.png", "benign"),
    ]
    csv_path = _classes_csv(generic, rows)
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(
            generic,
            tmp_path / "out",
            DataOptions(image_pattern="case_{id}.png", mask_pattern="mask_{id}.png", classes=csv_path),
        )
    reasons = [str(problem) for problem in caught.value.problems]
    assert any("classes.csv:10: unknown class 'cyst'" in reason for reason in reasons)
    assert any("'case_0042.png'" in reason and "not an image" in reason for reason in reasons)


def test_image_missing_from_csv_is_refused(generic, tmp_path):
    csv_path = _classes_csv(generic, [(f"case_{k:04d}.png", "benign") for k in range(1, 10)])
    with pytest.raises(DatasetError, match="case_0010.png: no class for this image"):
        prepare_dataset(
            generic,
            tmp_path / "out",
            DataOptions(image_pattern="case_{id}.png", mask_pattern="mask_{id}.png", classes=csv_path),
        )


def test_names_that_do_not_match_are_reported(generic, tmp_path):
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(
            generic, tmp_path / "out", DataOptions(image_pattern="case_{id}.png", mask_pattern="label_{id}.png")
        )
    reasons = [str(problem) for problem in caught.value.problems]
    assert sum("does not match the mask pattern" in reason for reason in reasons) == 10
    assert sum("image without mask" in reason for reason in reasons) == 10


def test_missing_folder_and_bad_pattern(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DatasetError, match="folder not found"):
        prepare_dataset(tmp_path / "raw", tmp_path / "out", DataOptions(layout="folders"))
    with pytest.raises(DatasetError, match="exactly once"):
        prepare_dataset(tmp_path / "raw", tmp_path / "out", DataOptions(layout="folders", mask_pattern="mask.png"))


def test_pattern_regex():
    assert pattern_regex("case_{id}.png").fullmatch("case_0001.png")["id"] == "0001"
    assert pattern_regex("{id}_mask*.png").fullmatch("benign (1)_mask_1.png")["id"] == "benign (1)"
    assert pattern_regex("{id}.png").fullmatch("a+b.png")["id"] == "a+b"


def test_folder_options_with_busi_layout_are_refused(generic, tmp_path):
    with pytest.raises(DatasetError, match="'folders' layout only"):
        prepare_dataset(generic, tmp_path / "out", DataOptions(layout="busi", mask_pattern="mask_{id}.png"))


PATIENT_COLUMNS = {"id_column": "filename", "class_column": "diagnosis", "group_column": "patient_id"}


@pytest.fixture
def patients(tmp_path) -> tuple[Path, Path]:
    """30 images of 12 patients (2 or 3 each, one class per patient) and 2 with an empty patient cell; a CSV
    with columns filename, diagnosis, patient_id."""
    root, rows = tmp_path / "patients", []
    for patient in range(12):
        for _ in range(2 + patient % 2):
            rows.append((f"us{len(rows):03d}.png", "benign" if patient % 3 else "malignant", f"P{patient:02d}"))
    rows += [(f"us{len(rows) + k:03d}.png", "benign", "") for k in range(2)]
    for k, (name, _, _) in enumerate(rows):
        mask = np.zeros((32, 32), np.uint8)
        mask[4:9, 3 : 3 + k % 10 + 1] = 255
        _save(np.full((32, 32), 20 + 7 * k, np.uint8), root / "images" / name)  # every image has its own pixels
        _save(mask, root / "masks" / name)
    csv_path = root / "patients.csv"
    csv_path.write_text("filename,diagnosis,age,patient_id\n" + "".join(f"{n},{c},50,{p}\n" for n, c, p in rows))
    return root, csv_path


def _sections_by_group(out: Path) -> dict[str, set[str]]:
    by_group: dict[str, set[str]] = {}
    for record in json.loads((out / "manifest.json").read_text())["images"]:
        by_group.setdefault(record["group"], set()).add(record["section"])
    return by_group


@pytest.mark.parametrize("seed", range(4))
def test_a_patient_never_straddles_a_split(patients, tmp_path, seed):
    root, csv_path = patients
    summary = prepare_dataset(
        root, tmp_path / "out", DataOptions(classes=csv_path, **PATIENT_COLUMNS), seed=seed, labeled_fraction=0.25
    )
    by_group = _sections_by_group(tmp_path / "out")
    assert len(by_group) == 13 and len(by_group.pop(None)) <= 2  # the 2 images without a patient
    assert all(len(sections) == 1 for sections in by_group.values()), by_group  # training/unlabeled/validation/test
    assert set().union(*by_group.values()) == {"training", "unlabeled", "validation", "test"}
    assert summary["multi_image_groups"] == 12 and summary["images_in_multi_image_groups"] == 30


def test_the_manifest_records_the_group(patients, tmp_path):
    root, csv_path = patients
    summary = prepare_dataset(root, tmp_path / "out", DataOptions(classes=csv_path, **PATIENT_COLUMNS))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    groups = {record["id"]: record["group"] for record in manifest["images"]}
    assert groups["us0000"] == groups["us0001"] == "P00" and groups["us0002"] == "P01" and groups["us0031"] is None
    assert manifest["settings"]["group_column"] == summary["group_column"] == "patient_id"
    assert summary["classes"] == {"benign": 22, "malignant": 10}


def test_without_a_group_column_the_record_has_no_group(patients, tmp_path):
    root, csv_path = patients
    summary = prepare_dataset(
        root, tmp_path / "out", DataOptions(classes=csv_path, id_column="filename", class_column="diagnosis")
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {record["group"] for record in manifest["images"]} == {None} and manifest["settings"]["group_column"] is None
    assert summary["multi_image_groups"] == 0


@pytest.mark.parametrize(
    ("columns", "missing"),
    [
        ({"id_column": "filename", "class_column": "diagnosis", "group_column": "patient"}, "'patient'"),
        ({"class_column": "label", "group_column": "patient_id"}, "'image', 'label'"),
    ],
)
def test_a_missing_column_is_one_line_naming_the_csv(patients, tmp_path, columns, missing):
    root, csv_path = patients
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(root, tmp_path / "out", DataOptions(classes=csv_path, **columns))
    assert [str(problem) for problem in caught.value.problems] == [
        f"{csv_path}: no column {missing} (columns: filename, diagnosis, age, patient_id)"
    ]
    assert not (tmp_path / "out").exists()


def test_column_options_need_a_class_csv(patients, tmp_path):
    root, csv_path = patients
    with pytest.raises(
        DatasetError, match="--group-column names a column of the class CSV: give the CSV with --classes"
    ):
        prepare_dataset(root, tmp_path / "out", DataOptions(group_column="patient_id"))
    with pytest.raises(DatasetError, match="must differ from the id and class columns"):
        prepare_dataset(
            root,
            tmp_path / "out",
            DataOptions(classes=csv_path, id_column="filename", class_column="diagnosis", group_column="diagnosis"),
        )


def test_cli_group_column(patients, tmp_path, capsys):
    from mgcc import cli

    root, csv_path = patients
    cli.main(
        [
            "prepare",
            str(root),
            str(tmp_path / "out"),
            "--classes",
            str(csv_path),
            "--id-column",
            "filename",
            "--class-column",
            "diagnosis",
            "--group-column",
            "patient_id",
        ]
    )
    assert (
        "groups by column 'patient_id' (merged with duplicates): 12 multi-image groups (30 images) kept together"
        in capsys.readouterr().out
    )
    with pytest.raises(SystemExit) as stopped:
        cli.main(
            ["prepare", str(root), str(tmp_path / "other"), "--classes", str(csv_path), "--group-column", "patient"]
        )
    assert (
        stopped.value.code == 2
        and f"{csv_path}: no column 'image', 'class', 'patient' (columns:" in capsys.readouterr().err
    )


def test_a_prepared_generic_dataset_is_split_again(generic, tmp_path):
    """Its class is `lesion` (no class CSV): `mgcc run/evaluate --data PREPARED` split it again without a word."""
    prepare_dataset(
        generic, tmp_path / "once", DataOptions(image_pattern="case_{id}.png", mask_pattern="mask_{id}.png")
    )
    summary = prepare_any(tmp_path / "once", tmp_path / "twice", labeled_fraction=0.5, seed=1, include_normal=False)
    assert summary["images"] == 10 and summary["classes"] == {"lesion": 10}
