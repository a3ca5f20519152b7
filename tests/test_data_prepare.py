"""`prepare` on phantom data: the prepared-dataset contract of docs/architecture.md, determinism, merged masks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from mgcc.data.datalist import SECTIONS
from mgcc.data.prepare import prepare, prepare_dataset
from mgcc.data.records import DatasetError


def _datalist(prepared: Path) -> dict:
    return json.loads((prepared / "datalist.json").read_text())


def test_contract_layout(prepared_phantom):
    datalist = _datalist(prepared_phantom)
    assert list(datalist) == sorted(SECTIONS)
    for section, entries in datalist.items():
        for entry in entries:
            assert entry["class"] in ("benign", "malignant")
            assert ("label" in entry) == (section != "unlabeled")
            for key in ("image", "label"):
                if key in entry:
                    assert not Path(entry[key]).is_absolute() and (prepared_phantom / entry[key]).is_file()
    manifest = json.loads((prepared_phantom / "manifest.json").read_text())
    assert len(manifest["images"]) == sum(len(entries) for entries in datalist.values()) == 41
    record = manifest["images"][0]
    assert set(record) >= {"id", "class", "source_image", "source_masks", "size", "lesion_fraction", "sha256"}


def test_monai_reads_every_section(prepared_phantom):
    for section in SECTIONS:
        entries = load_decathlon_datalist(str(prepared_phantom / "datalist.json"), True, section, str(prepared_phantom))
        assert entries and all(Path(entry["image"]).is_file() for entry in entries)


def test_images_are_grey_and_labels_are_0_255(prepared_phantom):
    for label_path in (prepared_phantom / "labels").glob("*.png"):
        label, image = Image.open(label_path), Image.open(prepared_phantom / "images" / label_path.name)
        assert label.mode == image.mode == "L" and label.size == image.size
        assert set(np.unique(np.asarray(label))) <= {0, 255}


def test_labels_are_the_union_of_all_mask_files(phantom_raw, prepared_phantom):
    manifest = json.loads((prepared_phantom / "manifest.json").read_text())
    multi = [record for record in manifest["images"] if len(record["source_masks"]) > 1]
    assert multi
    for record in multi:
        union = np.logical_or.reduce(
            [np.asarray(Image.open(phantom_raw / mask)) > 0 for mask in record["source_masks"]]
        )
        label = np.asarray(Image.open(prepared_phantom / record["label"])) > 0
        assert np.array_equal(label, union), record["id"]
        assert record["lesion_fraction"] == round(float(union.mean()), 6)


def test_labeled_fraction_and_sections(prepared_phantom):
    counts = {section: len(entries) for section, entries in _datalist(prepared_phantom).items()}
    assert counts == {"training": 7, "unlabeled": 22, "validation": 4, "test": 8}


def test_datalist_is_byte_identical_across_runs_and_copies(phantom_raw, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(phantom_raw, copy)
    first = prepare_dataset(phantom_raw, tmp_path / "one", labeled_fraction=0.25, seed=0)
    second = prepare_dataset(copy, tmp_path / "two", labeled_fraction=0.25, seed=0)
    assert (tmp_path / "one" / "datalist.json").read_bytes() == (tmp_path / "two" / "datalist.json").read_bytes()
    assert first["sections"] == second["sections"]
    prepare_dataset(phantom_raw, tmp_path / "other", labeled_fraction=0.25, seed=1)
    assert (tmp_path / "one" / "datalist.json").read_bytes() != (tmp_path / "other" / "datalist.json").read_bytes()


def test_include_normal_and_full_supervision(phantom_raw, tmp_path):
    summary = prepare_dataset(phantom_raw, tmp_path / "out", include_normal=True, labeled_fraction=1.0)
    assert summary["classes"] == {"benign": 24, "malignant": 17, "normal": 7}
    assert summary["sections"]["unlabeled"]["total"] == 0
    normal = [entry for entry in _datalist(tmp_path / "out")["test"] if entry["class"] == "normal"]
    assert normal and not np.asarray(Image.open(tmp_path / "out" / normal[0]["label"])).any()


def test_rerun_replaces_a_previous_preparation(phantom_raw, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(phantom_raw, out, include_normal=True)
    prepare_dataset(phantom_raw, out)
    assert not list((out / "images").glob("normal_*.png"))


def test_an_interrupted_rerun_keeps_the_previous_dataset(phantom_raw, tmp_path, monkeypatch):
    import mgcc.data.prepare as prepare_module

    out = tmp_path / "out"
    prepare_dataset(phantom_raw, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    written = []

    def write_then_stop(case, folder, *settings):
        if len(written) == 5:
            raise KeyboardInterrupt  # the user stops the rerun midway
        written.append(case.id)
        real_write(case, folder, *settings)

    real_write = prepare_module._write_case
    monkeypatch.setattr(prepare_module, "_write_case", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(phantom_raw, out, include_normal=True, seed=3)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.setattr(prepare_module, "_write_case", real_write)
    prepare_dataset(phantom_raw, out, include_normal=True)  # the next run cleans up and replaces it
    assert list((out / "images").glob("normal_*.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_prints_split_counts(phantom_raw, tmp_path, capsys):
    prepare(str(phantom_raw), str(tmp_path / "out"), labeled_fraction="1/4")
    printed = capsys.readouterr().out
    assert "prepared 41 images" in printed and "excluded: 7 normal" in printed
    assert [line.split()[-1] for line in printed.splitlines() if line.split()[0] in SECTIONS] == ["7", "22", "4", "8"]


def test_without_a_group_column_nothing_is_grouped(prepared_phantom):
    manifest = json.loads((prepared_phantom / "manifest.json").read_text())
    assert manifest["settings"]["group_column"] is None and {record["group"] for record in manifest["images"]} == {None}
    assert manifest["summary"]["multi_image_groups"] == len(manifest["summary"]["duplicate_groups"])


def test_a_group_column_needs_a_class_csv(phantom_raw, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        prepare(str(phantom_raw), str(tmp_path / "out"), group_column="patient")
    assert stopped.value.code == 2 and "--group-column names a column of the class CSV" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_second_prepare_into_the_same_folder_at_once_is_refused(phantom_raw, tmp_path):
    import fcntl

    out = tmp_path / "prepared"
    with open(tmp_path / ".prepared.lock", "w") as held:  # what a running prepare holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DatasetError, match="another mgcc prepare is writing this folder now"):
            prepare_dataset(phantom_raw, out)
    assert not out.exists()
    prepare_dataset(phantom_raw, out)  # free again
