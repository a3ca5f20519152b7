"""Segmentation variants name their folders; runs made before that are renamed without training anything again."""

import json

import pytest

from mgcc.errors import MgccError
from mgcc.presets import load_preset
from mgcc.stages import Run, Stage, StageResult, execute_stages, read_record
from mgcc.variants import VariantError, adopt_legacy_folders, run_variant, variant_of


def test_the_preset_chooses_the_variant_mgcc_run_trains():
    assert run_variant(load_preset("demo")) == run_variant(load_preset("busi-cpu")) == "mgcc-synthetic"
    preset = load_preset("busi-cpu")
    preset["segmentation"]["train"]["unlabeled_source"] = "real"
    assert run_variant(preset) == "mgcc-real"
    del preset["segmentation"]["train"]["unlabeled_source"]
    assert run_variant(preset) == "mgcc-real"  # train.json's default
    preset["segmentation"]["train"]["unlabeled_source"] = "sythetic"
    with pytest.raises(VariantError, match="segmentation.train.unlabeled_source 'sythetic': expected real, synthetic"):
        run_variant(preset)


def test_a_training_stage_is_known_by_its_args_file():
    """`args.json` holds the config files as paths and only the overrides; the bundle's defaults fill the rest."""
    assert variant_of(["/x/configs/train.json", "/x/configs/train_supervised.json"], {}) == "supervised"
    assert (
        variant_of(["/x/configs/train.json", "/x/configs/evaluate.json"], {"unlabeled_source": "both"}) == "mgcc-both"
    )
    assert variant_of(["/x/configs/train.json"], {}) == "mgcc-real"
    assert variant_of(["/x/configs/train.json", "/x/configs/train_cct.json"], {}) is None


def _stages(segmentation: str, evaluate: str, ran: list[str]) -> list[Stage]:
    """The shape of `mgcc run`'s stages after `prepare`, with the training and evaluation under the given names."""

    def stage(name, after, whole=False, reads=()):
        def execute(run):
            run.folder(name).mkdir(parents=True, exist_ok=True)
            (run.folder(name) / "done").write_text(name)
            ran.append(name)
            return StageResult(name, 0.1, 1.0)

        return Stage(name=name, outputs=["done"], execute=execute, reads=reads, after=after, reads_whole_preset=whole)

    return [
        stage("prepare", ()),
        stage(segmentation, ("prepare",), reads=("x",)),
        stage(evaluate, (segmentation,)),
        stage("lesions", (segmentation,)),
        stage("report", (evaluate, "lesions"), whole=True),
        stage("package", (segmentation, evaluate)),
    ]


def test_a_run_from_before_is_renamed_and_only_its_report_is_written_again(tmp_path, capsys):
    ran: list[str] = []
    run = Run({"x": 1}, tmp_path)
    execute_stages(run, _stages("segmentation", "evaluate", ran))
    # the training stage trained MGCC with real unlabeled images: its args.json says so, whatever the preset says now
    (tmp_path / "segmentation" / "args.json").write_text(
        json.dumps({"config_file": ["/b/configs/train.json"], "unlabeled_source": "real"})
    )
    (tmp_path / "evaluate.stale-1").mkdir()  # kept as it is

    adopt_legacy_folders(tmp_path, "mgcc-synthetic")
    assert "segmentation renamed segmentation-mgcc-real/" in capsys.readouterr().out
    assert not (tmp_path / "segmentation").exists() and not (tmp_path / "evaluate").exists()
    assert read_record(tmp_path, "segmentation-mgcc-real")["name"] == "segmentation-mgcc-real"
    assert (tmp_path / "evaluate-mgcc-real" / "done").is_file() and (tmp_path / "evaluate.stale-1").is_dir()

    ran.clear()
    execute_stages(run, _stages("segmentation-mgcc-real", "evaluate-mgcc-real", ran))
    assert ran == ["report"]  # its text names the folders
    adopt_legacy_folders(tmp_path, "mgcc-synthetic")  # nothing left to rename
    ran.clear()
    execute_stages(run, _stages("segmentation-mgcc-real", "evaluate-mgcc-real", ran))
    assert ran == []


def test_a_stage_that_was_out_of_date_before_the_rename_still_runs_again(tmp_path):
    ran: list[str] = []
    execute_stages(Run({"x": 1}, tmp_path), _stages("segmentation", "evaluate", ran))
    execute_stages(Run({"x": 2}, tmp_path), _stages("segmentation", "evaluate", [])[:2])  # only the training ran
    adopt_legacy_folders(tmp_path, "mgcc-synthetic")
    ran.clear()
    execute_stages(Run({"x": 2}, tmp_path), _stages("segmentation-mgcc-synthetic", "evaluate-mgcc-synthetic", ran))
    assert ran == ["evaluate-mgcc-synthetic", "lesions", "report", "package"]  # they read the earlier model


def test_a_legacy_folder_beside_its_new_name_is_refused(tmp_path):
    (tmp_path / "segmentation").mkdir()
    (tmp_path / "segmentation-mgcc-synthetic").mkdir()
    with pytest.raises(MgccError, match=r"both segmentation/ .* and segmentation-mgcc-synthetic/ exist"):
        adopt_legacy_folders(tmp_path, "mgcc-synthetic")
    assert (tmp_path / "segmentation").is_dir()
