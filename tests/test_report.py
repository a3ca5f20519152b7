"""The pipeline report reads the stages' files and writes every number to `report/summary.json`."""

import json

import numpy as np
from PIL import Image

from mgcc.report import write_report
from mgcc.stages import StageResult, write_record


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_report_writes_generator_lesion_and_test_numbers(tmp_path):
    out = tmp_path / "run"
    _write(
        out / "prepare" / "dataset" / "datalist.json",
        {"training": [{"image": "images/a.png", "label": "labels/a.png", "class": "benign"}], "test": []},
    )
    (out / "prepare" / "dataset" / "images").mkdir()
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(out / "prepare" / "dataset" / "images" / "a.png")
    kid = {"mean": 0.012, "std": 0.001, "subsets": 100, "subset_size": 50}
    _write(
        out / "quality" / "quality.json",
        {
            "reconstruction_validation": {"val_psnr": 25.0},
            "num_samples": 50,
            "fid": {
                "generated_vs_train": 61.5,
                "validation_vs_train": 40.0,
                "generated_vs_train_at_validation_size": 70.0,
                "num_generated": 50,
                "num_validation": 10,
            },
            "kid": {
                "generated_vs_train": kid,
                "validation_vs_train": dict(kid, mean=0.002),
                "reconstructed_validation_vs_train": dict(kid, mean=0.0105),
            },
            "frame_intensity_ratio": 1.04,
            "diversity_msssim": {"generated": {"mean": 0.2}, "real_train": {"mean": 0.18}},
            "nearest_neighbour_rmse": {
                "sample_to_train": {"median": 0.14},
                "train_to_train": {"median": 0.12},
                "possible_copies": 0,
            },
            "lesion_contrast": {
                "generated": {"mean": -0.096, "std": 0.07, "darker_share": 0.75, "n": 48},
                "real_labeled": {"mean": -0.379, "std": 0.04, "darker_share": 1.0, "n": 10},
            },
        },
    )
    rule = {"min_area": 0.005, "min_share": 0.7, "connectivity": 8}
    _write(
        out / "lesions" / "lesion_rate.json",
        {
            "synthetic": {
                "rate": 0.625,
                "with_clear_lesion": 5,
                "images": 8,
                "rule": rule,
                "mask_dice": {"mean": 0.71, "std": 0.05, "n": 8},
            },
            "real_test": {"rate": 0.9, "with_clear_lesion": 9, "images": 10, "rule": rule},
        },
    )
    _write(out / "evaluate" / "evaluation" / "summary.json", {"dice": {"mean": 0.7, "std": 0.2}, "n": 10})
    _write(
        out / "evaluate-with-normal" / "evaluation" / "summary.json",
        {
            "dice": {"mean": 0.72, "std": 0.2},
            "n": 12,
            "lesion_images": {"n": 10, "dice": {"mean": 0.7, "std": 0.2}, "sensitivity": 0.9},
            "lesion_free_images": {"n": 2, "specificity": 0.5},
        },
    )
    for name in ("prepare", "quality"):
        write_record(out, StageResult(name, 1.5, 100.0))

    write_report(out, out / "report", {"name": "test"})

    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["synthetic_lesion_rate"] == 0.625 and summary["real_test_lesion_rate"] == 0.9
    assert summary["synthetic_mask_dice"] == {"mean": 0.71, "std": 0.05, "n": 8}
    assert summary["generator"]["fid"]["generated_vs_train"] == 61.5
    assert summary["generator"]["kid"]["validation_vs_train"]["mean"] == 0.002
    assert summary["generator"]["frame_intensity_ratio"] == 1.04
    assert summary["test"]["evaluate"]["dice"]["mean"] == 0.7
    assert summary["stages"]["quality"]["seconds"] == 1.5
    report = (out / "report" / "report.md").read_text()
    assert "| synthetic | 5 of 8 | 0.62 |" in report and "| real test | 9 of 10 | 0.90 |" in report
    assert "agrees with it at Dice 0.710 ± 0.050 (n = 8)" in report
    assert (
        "| lesion minus surroundings, mean intensity (share darker by 10 gray levels): generated, in the mask it "
        "was generated from | -0.096 (0.75 of 48) |" in report
    )
    assert "| 61.50 |" in report and "12.00 ± 1.00" in report  # FID, KID x 1000
    assert "(the ceiling of decoded samples) | 10.50 ± 1.00 |" in report
    assert (
        "- evaluate-with-normal: lesion images: Dice 0.7000, lesion found in 90.0% of 10; lesion-free images: "
        "50.0% of 2 left empty"
    ) in report
    assert "- evaluate:" not in report  # no lesion-free image: the mean Dice says it all


def test_stale_stage_folders_are_not_reported(tmp_path):
    """`evaluate.stale-1/` (an earlier run kept aside) is neither a model in the summary nor a learning curve."""
    out = tmp_path / "run"
    _write(out / "prepare" / "dataset" / "datalist.json", {"training": [], "test": []})
    for name, dice in (("evaluate", 0.7), ("evaluate.stale-1", 0.2)):
        _write(out / name / "evaluation" / "summary.json", {"dice": {"mean": dice, "std": 0.1}, "n": 10})
    for name in ("segmentation", "segmentation.stale-1"):
        (out / name).mkdir(parents=True)
        (out / name / "training_history.csv").write_text("iteration,loss\n1,0.5\n2,0.4\n")

    write_report(out, out / "report", {"name": "test"})

    summary = json.loads((out / "report" / "summary.json").read_text())
    assert list(summary["test"]) == ["evaluate"] and summary["test"]["evaluate"]["dice"]["mean"] == 0.7
    report = (out / "report" / "report.md").read_text()
    assert ".stale-1" not in report
    assert [p.name for p in (out / "report" / "figures").glob("segmentation*")] == ["segmentation_training_history.png"]


def test_eval_metrics_carry_detection_numbers_only_where_the_test_set_has_them():
    from mgcc.export import summary_metrics

    plain = {
        "dice": {"mean": 0.7},
        "iou": {"mean": 0.6},
        "hd95": {"mean": 9.0},
        "n": 10,
        "lesion_images": {"n": 10, "dice": {"mean": 0.7, "std": 0.2}, "sensitivity": 0.9},
        "lesion_free_images": {"n": 0, "specificity": None},
    }
    assert summary_metrics("test", plain) == {
        "test_mean_dice": 0.7,
        "test_mean_iou": 0.6,
        "test_mean_hd95": 9.0,
        "test_sensitivity": 0.9,
    }
    with_normal = {
        **plain,
        "lesion_images": {"n": 8, "dice": {"mean": 0.65, "std": 0.2}, "sensitivity": 0.875},
        "lesion_free_images": {"n": 2, "specificity": 0.5},
    }
    assert summary_metrics("test", with_normal) == {
        "test_mean_dice": 0.7,
        "test_mean_iou": 0.6,
        "test_mean_hd95": 9.0,
        "test_lesion_mean_dice": 0.65,
        "test_sensitivity": 0.875,
        "test_specificity": 0.5,
    }


def test_the_stage_table_shows_what_each_record_measured_and_reads_records_from_before_a_measure(tmp_path):
    """Each stage's row is what its `stage.json` says it measured; a record written before precision was measured
    (none) still reads, with that cell blank and the key left out of `summary.json`."""
    from mgcc.report import report_summary, stage_table

    out = tmp_path / "run"
    (out / "segmentation-mgcc-synthetic").mkdir(parents=True)
    write_record(out, StageResult("segmentation-mgcc-synthetic", 12.345, 321.9, ["c"], precision="float32"))
    _write(out / "prepare" / "stage.json", {"name": "prepare", "seconds": 3, "peak_rss_mb": 4.0, "command": []})
    assert stage_table(out).splitlines() == [
        "| stage | wall time (s) | peak RSS (MB) | precision |",
        "|---|---|---|---|",
        "| prepare | 3.0 | 4 |  |",
        "| segmentation-mgcc-synthetic | 12.3 | 322 | float32 |",
    ]
    assert report_summary(out, {}, None, None)["stages"] == {
        "prepare": {"seconds": 3, "peak_rss_mb": 4.0},
        "segmentation-mgcc-synthetic": {"seconds": 12.35, "peak_rss_mb": 321.9, "precision": "float32"},
    }
