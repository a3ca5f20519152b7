"""Stage bookkeeping: records, completeness, failures, presets."""

import json
import re
import sys
from pathlib import Path

import pytest

from mgcc import PRESETS_DIR
from mgcc.presets import PresetError, available_presets, load_preset
from mgcc.stages import StageError, StageResult, is_complete, read_record, run_process, write_record


def test_run_process_measures_and_logs(tmp_path):
    code = "import numpy as np; a = np.ones(40_000_000); print('allocated', a.nbytes)"
    result = run_process("alloc", [sys.executable, "-c", code], cwd=tmp_path, log_file=tmp_path / "log.txt")
    assert result.peak_rss_mb > 300  # the child held 320 MB at its peak
    assert result.seconds > 0
    assert "allocated 320000000" in (tmp_path / "log.txt").read_text()


def test_failing_process_names_stage_and_log(tmp_path):
    with pytest.raises(StageError, match=r"stage 'boom' failed with exit code 3; see .*log.txt"):
        run_process("boom", [sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path, log_file=tmp_path / "log.txt")


def test_complete_needs_record_and_outputs(tmp_path):
    (tmp_path / "train").mkdir()
    assert not is_complete(tmp_path, "train", ["model.pt"])
    write_record(tmp_path, StageResult("train", 1.5, 10.0, ["x"]))
    assert not is_complete(tmp_path, "train", ["model.pt"])  # record without its output: incomplete
    (tmp_path / "train" / "model.pt").write_bytes(b"w")
    assert is_complete(tmp_path, "train", ["model.pt"])
    assert read_record(tmp_path, "train")["seconds"] == 1.5


def test_presets_load_and_unknown_preset_is_named(tmp_path):
    assert {"demo", "busi-cpu", "busi-gpu"} <= set(available_presets())
    assert load_preset("demo")["name"] == "demo"
    with pytest.raises(PresetError, match="preset 'nope' not found"):
        load_preset("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": {}}))
    with pytest.raises(PresetError, match="lacks section"):
        load_preset(bad)
    misspelled = json.loads((PRESETS_DIR / "demo.json").read_text())
    misspelled["data"] |= {"include_nomal": True}
    misspelled["data"]["phantom"] |= {"sise": 64}
    bad.write_text(json.dumps(misspelled))
    with pytest.raises(PresetError, match=r"unknown entry\(ies\) include_nomal, phantom.sise in section 'data'"):
        load_preset(bad)


def test_a_changed_preset_value_reruns_exactly_the_stages_that_depend_on_it(tmp_path, capsys):
    from mgcc.stages import Run, Stage, execute_stages

    runs = []

    def stage(name, reads, after=(), whole=False):
        def execute(run):
            (run.folder(name)).mkdir(parents=True, exist_ok=True)
            (run.folder(name) / "done").write_text(name)
            runs.append(name)
            return StageResult(name, 0.1, 1.0)

        return Stage(name=name, outputs=["done"], execute=execute, reads=reads, after=after, reads_whole_preset=whole)

    # a <- b (reads a's result); c independent; report reads everything
    stages = [
        stage("a", ("x.a",)),
        stage("b", ("x.b",), ("a",)),
        stage("c", ("x.c",)),
        stage("report", (), ("b", "c"), whole=True),
    ]
    preset = {"x": {"a": 1, "b": 2, "c": 3}}
    execute_stages(Run(preset, tmp_path), stages)
    assert runs == ["a", "b", "c", "report"]

    def rerun(change):
        runs.clear()
        preset["x"].update(change)
        execute_stages(Run(preset, tmp_path), stages)
        return list(runs)

    assert rerun({}) == []
    assert rerun({"b": 20}) == ["b", "report"]
    assert "stage 'b' ran with other settings (changed: preset x.b): running it again" in capsys.readouterr().out
    assert rerun({"a": 10}) == ["a", "b", "report"]
    assert rerun({"c": 30}) == ["c", "report"]
    record = read_record(tmp_path, "b")
    assert set(record["inputs"]) == {"preset x.b", "stage a"} and len(record["fingerprint"]) == 16
    assert set(read_record(tmp_path, "report")["inputs"]) == {"preset (all)", "stage b", "stage c"}


def test_the_built_in_stages_keep_the_record_keys_of_existing_runs(tmp_path):
    """The part names are stored in every `stage.json`: a renamed part would rerun every stage of an existing run
    (the stage names that became variant names are rewritten by `adopt_legacy_folders`, see test_variants.py).
    The whole preset and the data folder are flags, not magic entries of `reads`."""
    from mgcc.pipeline import run_stages
    from mgcc.stages import Run, Stage, fingerprint_parts
    from mgcc.variants import run_variant

    run = Run(load_preset("demo"), tmp_path, tmp_path, {"layout": "generic"})
    keys = {stage.name: sorted(fingerprint_parts(run, stage)) for stage in run_stages(run_variant(run.preset)).values()}
    assert keys["prepare"] == ["preset data"]
    assert keys["report"] == ["preset (all)", "stage evaluate-mgcc-synthetic", "stage lesions", "stage quality"]
    assert keys["sample"] == [
        "bundle configs",
        "preset ldm.autoencoder",
        "preset ldm.common",
        "preset ldm.diffusion",
        "preset ldm.sample",
        "stage diffusion",
    ]
    assert keys["segmentation-mgcc-synthetic"] == [
        "bundle configs",
        "preset segmentation.common",
        "preset segmentation.train",
        "settings",
        "stage prepare",
        "stage sample",
    ]  # the demo trains on samples
    for special in ("", "data"):
        with pytest.raises(AssertionError, match="reads_whole_preset / reads_data_folder"):
            Stage(name="x", outputs=[], execute=lambda run: None, reads=(special,))


def test_an_interrupted_stage_resumes_only_with_the_same_settings(tmp_path):
    """What an interrupted stage left (its checkpoints) stays for a rerun with the same settings; with other
    settings, or when a complete stage runs again, the earlier folder is kept aside as `<name>.stale-<k>`."""
    from mgcc.stages import Run, Stage, execute_stages

    seen = []

    def execute(run):
        folder = run.folder("train")
        seen.append((folder / "checkpoint").is_file())
        (folder / "checkpoint").write_text("half way")
        if run.preset["stop"]:
            raise KeyboardInterrupt
        (folder / "done").write_text("")
        return StageResult("train", 0.1, 1.0)

    stages = [Stage(name="train", outputs=["done"], execute=execute, reads=("lr",))]
    preset = {"lr": 1, "stop": True}
    with pytest.raises(KeyboardInterrupt):
        execute_stages(Run(preset, tmp_path), stages)
    preset["stop"] = False
    execute_stages(Run(preset, tmp_path), stages)
    assert seen == [False, True]  # the rerun found the checkpoint: it resumes
    assert not list(tmp_path.glob("train.stale-*"))

    preset.update(lr=2, stop=True)  # other settings, interrupted again
    with pytest.raises(KeyboardInterrupt):
        execute_stages(Run(preset, tmp_path), stages)
    assert (tmp_path / "train.stale-1" / "done").is_file()  # the complete earlier run, kept
    preset.update(lr=3, stop=False)
    execute_stages(Run(preset, tmp_path), stages)
    assert seen[2:] == [False, False]  # neither started from a checkpoint of other settings
    assert (tmp_path / "train.stale-2" / "checkpoint").is_file() and read_record(tmp_path, "train") is not None


def test_lost_outputs_and_cut_short_records_run_the_stage_again(tmp_path, capsys):
    """A deleted output (also one outside the stage folder), a truncated `stage.json` or output JSON and an empty
    `started.json` (a kill while writing) make the stage run again, the earlier folder kept aside; no traceback."""
    from mgcc.stages import Run, Stage, execute_stages

    runs = []

    def execute(run):
        runs.append(1)
        (run.folder("train") / "list.json").write_text("[1]")
        (run.out / "models").mkdir(exist_ok=True)
        (run.out / "models" / "w.pt").write_text("w")
        return StageResult("train", 0.1, 1.0)

    stages = [Stage(name="train", outputs=["list.json", "../models/w.pt"], execute=execute, reads=("lr",))]
    execute_stages(Run({"lr": 1}, tmp_path), stages)
    for damage in (
        lambda: (tmp_path / "models" / "w.pt").unlink(),
        lambda: (tmp_path / "train" / "list.json").write_text("[1"),
        lambda: (tmp_path / "train" / "stage.json").write_text('{"name": "tr'),
    ):
        damage()
        execute_stages(Run({"lr": 1}, tmp_path), stages)
    assert len(runs) == 4 and "../models/w.pt is missing or unreadable: running it again" in capsys.readouterr().out
    assert len(list(tmp_path.glob("train.stale-*"))) == 3
    (tmp_path / "train" / "stage.json").unlink()
    (tmp_path / "train" / "started.json").write_text("")
    execute_stages(Run({"lr": 1}, tmp_path), stages)
    assert len(runs) == 5 and len(list(tmp_path.glob("train.stale-*"))) == 4  # settings unknown: not resumed


def test_a_rerun_sets_aside_the_resume_checkpoints_kept_outside_the_stage_folder(tmp_path):
    """The LDM stages keep their resume checkpoints in the shared `ldm_models/`: a stage that runs again with other
    settings must not resume from them (it would finish at once with the old model)."""
    from mgcc.stages import Run, Stage, execute_stages

    seen = []

    def execute(run):
        seen.append(sorted(p.name for p in (run.out / "models").glob("*.pt")))
        (run.out / "models").mkdir(exist_ok=True)
        (run.out / "models" / f"train_resume_{run.preset['lr']}.pt").write_text("")
        run.folder("train").mkdir(exist_ok=True)
        (run.folder("train") / "done").write_text("")
        return StageResult("train", 0.1, 1.0)

    stages = [
        Stage(name="train", outputs=["done"], execute=execute, reads=("lr",), checkpoints=("models/train_resume_*.pt",))
    ]
    execute_stages(Run({"lr": 1}, tmp_path), stages)
    execute_stages(Run({"lr": 2}, tmp_path), stages)
    assert seen == [[], []]  # the second run did not find the first run's checkpoint
    assert (tmp_path / "train.stale-1" / "train_resume_1.pt").is_file()


def _generic_copy(busi: Path, root: Path) -> Path:
    """The phantom's images as a generic-layout dataset: `images/case_<k>.png`, `masks/case_<k>_mask.png` and a CSV
    with the dataset's own column names, two images per patient."""
    import shutil

    rows = ["filename,diagnosis,patient"]
    images = sorted(p for p in busi.glob("*/*.png") if "_mask" not in p.name)
    for k, image in enumerate(images):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        shutil.copy(image, root / "images" / f"case_{k:03d}.png")
        shutil.copy(image.with_name(image.stem + "_mask.png"), root / "masks" / f"case_{k:03d}_mask.png")
        rows.append(f"case_{k:03d}.png,{image.parent.name},P{k // 2}")
    (root / "classes.csv").write_text("\n".join(rows) + "\n")
    return root


def test_data_in_each_form_runs_the_prepare_stage(tmp_path, capsys):
    """--data as a BUSI-layout folder, a generic-layout folder with `mgcc prepare`'s options, and a prepared folder
    (split again with the run's seed); a misspelled data option is refused before anything runs."""
    from mgcc.cli import main
    from mgcc.data.phantom import make_phantom_dataset

    busi = make_phantom_dataset(tmp_path / "busi", n=16, size=32, seed=3)
    generic = _generic_copy(busi, tmp_path / "generic")
    forms = {
        "busi": [str(busi)],
        "generic": [
            str(generic),
            "--image-pattern",
            "case_{id}.png",
            "--mask-pattern",
            "case_{id}_mask.png",
            "--classes",
            str(generic / "classes.csv"),
            "--id-column",
            "filename",
            "--class-column",
            "diagnosis",
            "--group-column",
            "patient",
        ],
        "prepared": [str(tmp_path / "busi-run" / "prepare" / "dataset")],
    }
    manifests = {}
    for name, data in forms.items():
        main(["run", "--preset", "demo", "--out", str(tmp_path / f"{name}-run"), "--stage", "prepare", "--data", *data])
        manifests[name] = json.loads((tmp_path / f"{name}-run" / "prepare" / "dataset" / "manifest.json").read_text())
        assert len(manifests[name]["images"]) == 14  # the two `normal` images are left out, as the preset says
    groups = {}
    for record in manifests["generic"]["images"]:
        groups.setdefault(record["group"], set()).add(record["section"])
    assert all(len(sections) == 1 for sections in groups.values())  # a patient never straddles a split
    sections = [{r["id"]: r["section"] for r in manifests[name]["images"]} for name in ("busi", "prepared")]
    assert sections[0] == sections[1]  # the same seed and fraction split a prepared folder the same way
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--preset", "demo", "--out", str(tmp_path / "x"), "--data", str(generic), "--group-colum", "p"])
    assert stopped.value.code == 2 and "unrecognized arguments: --group-colum p" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    before = sorted(busi.rglob("*"))
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--preset", "demo", "--out", str(busi / "run"), "--data", str(busi)])
    assert stopped.value.code == 2 and "must not be inside, equal to or above --data" in capsys.readouterr().err
    assert sorted(busi.rglob("*")) == before  # nothing written into the dataset


def test_a_stage_fingerprint_reads_only_the_config_files_it_runs(tmp_path):
    from mgcc.stages import Run, Stage, fingerprint_parts

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text("{}")
    stage = Stage(name="train", outputs=["done"], execute=lambda run: None, bundle=bundle, configs=("train.json",))
    run = Run({}, tmp_path / "out")
    before = fingerprint_parts(run, stage)
    (bundle / "configs" / "another_variant.json").write_text('{"x": 1}')  # a new config the stage does not run
    assert fingerprint_parts(run, stage) == before
    (bundle / "configs" / "train.json").write_text('{"lr": 2}')
    assert fingerprint_parts(run, stage)["bundle configs"] != before["bundle configs"]


def test_a_misspelled_override_is_refused_before_the_bundle_runs(tmp_path):
    from mgcc import SEG_BUNDLE
    from mgcc.stages import run_bundle, unknown_override_keys

    configs = [SEG_BUNDLE / "configs" / "train.json"]
    assert unknown_override_keys(configs, {"max_iterations": 5, "network_def#base_channels": 8}) == []
    assert unknown_override_keys(configs, {"max_iteration": 5, "network_def#base_chanels": 8}) == [
        "max_iteration",
        "network_def#base_chanels",
    ]
    with pytest.raises(StageError, match="stage 'segmentation': max_iteration match"):
        run_bundle("segmentation", tmp_path, SEG_BUNDLE, ["train.json"], {"max_iteration": 5})
    assert not (tmp_path / "segmentation").exists()  # refused before anything was written


def test_a_misspelled_preset_entry_is_refused_before_anything_runs(tmp_path):
    from mgcc.pipeline import make_run, unknown_preset_entries

    preset = load_preset("demo")
    assert unknown_preset_entries(preset) == []
    preset["ldm"]["diffusion"]["difusion_max_epochs"] = 3
    preset["segmentation"]["train"]["network_def#base_channels"] = 8  # a nested key of a known section is fine
    assert unknown_preset_entries(preset) == ["ldm.diffusion.difusion_max_epochs"]
    with pytest.raises(PresetError, match="preset demo: ldm.diffusion.difusion_max_epochs match"):
        make_run(preset, None, str(tmp_path / "out"), {})
    assert not (tmp_path / "out").exists()


def test_only_variants_that_train_on_synthetic_images_depend_on_the_generator(tmp_path):
    """Adding the generator's stages to a run later (`mgcc compare --variants mgcc-synthetic`) must not retrain the
    variants that never read its samples; the variant that does read them must notice a new sample."""
    from mgcc.pipeline import segmentation_stage
    from mgcc.stages import Run, fingerprint_parts, write_record

    run = Run(load_preset("busi-cpu"), tmp_path)
    from mgcc.variants import VARIANTS

    stages = {name: segmentation_stage(name, *VARIANTS[name]) for name in VARIANTS}
    before = {name: fingerprint_parts(run, stage) for name, stage in stages.items()}
    (tmp_path / "sample").mkdir()
    write_record(tmp_path, StageResult("sample", 1.0, 1.0, inputs={"anything": "x"}))
    after = {name: fingerprint_parts(run, stage) for name, stage in stages.items()}
    changed = sorted(name for name in VARIANTS if after[name] != before[name])
    assert changed == ["mgcc-both", "mgcc-synthetic", "mgcc-synthetic-pairs"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"data": {}, "ldm": {}', "is not valid JSON"),
        ('["data", "ldm", "segmentation"]', "expected a JSON object"),
        ('{"data": 5, "ldm": {}, "segmentation": {}}', r"section\(s\) data must be JSON objects"),
    ],
)
def test_a_malformed_preset_file_is_one_line_naming_it(tmp_path, capsys, text, message):
    from mgcc.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--preset", str(bad), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_the_stage_record_says_which_precision_the_bundle_ran_in_as_the_bundles_own_code_resolves_it(
    tmp_path, monkeypatch
):
    """A bundle stage's record holds what its forward passes ran in: asked of the segmentation bundle's own
    `AutocastInferer` with the stage's settings, not read from a line of its log (which says nothing here)."""
    import torch

    from mgcc import LDM_BUNDLE, SEG_BUNDLE
    from mgcc.stages import run_bundle, workflow_precision

    nhwc = ", channels-last" if torch.cuda.is_available() else ""  # on CUDA `channels_last: auto` is on
    assert workflow_precision(SEG_BUNDLE, ["train.json"], {"amp": False}) == "float32" + nhwc
    assert workflow_precision(SEG_BUNDLE, ["train.json"], {"amp": True}) == "bfloat16 autocast, channels-last"
    assert workflow_precision(SEG_BUNDLE, ["train.json", "evaluate.json"], {}) == "float32" + nhwc  # evaluate: amp off
    assert workflow_precision(SEG_BUNDLE, ["inference.json"], {"amp": "true", "channels_last": False}) == (
        "bfloat16 autocast"
    )
    assert workflow_precision(LDM_BUNDLE, ["train_autoencoder.json"], {}) is None

    def quiet_process(name, command, cwd, log_file, env=None):
        print("2026-12-04 16:00:00,000 - scripts.inferer - INFO - precision: float16 autocast")  # not believed
        return StageResult(name, 1.0, 10.0, command)

    monkeypatch.setattr("mgcc.stages.run_process", quiet_process)
    write_record(tmp_path, run_bundle("train", tmp_path, SEG_BUNDLE, ["train.json"], {"amp": True}))
    assert read_record(tmp_path, "train")["precision"] == "bfloat16 autocast, channels-last"
    write_record(tmp_path, run_bundle("autoencoder", tmp_path, LDM_BUNDLE, ["train_autoencoder.json"], {}))
    assert "precision" not in read_record(tmp_path, "autoencoder")
    with pytest.raises(StageError, match="stage 'train': config key 'amp' must be true, false or auto"):
        run_bundle("train", tmp_path, SEG_BUNDLE, ["train.json"], {"amp": "maybe"})


#: the fingerprint of each built-in stage of a run of `BEFORE` (`mgcc run`'s, then `mgcc compare`'s other variants'),
#: as the code before `Stage` and the runner moved into `mgcc.stages` (commit e67b0b0) wrote them into `stage.json`
FINGERPRINTS_BEFORE = {
    "prepare": "1ae2425e7eba33a2",
    "autoencoder": "bcfa07fcbbc1cdb7",
    "diffusion": "8f5e403ded06f16b",
    "sample": "f61c3132f3082e00",
    "quality": "e004c73f98dd78c5",
    "segmentation-mgcc-synthetic": "7abb70d9a5161ff6",
    "evaluate-mgcc-synthetic": "75c2c8af42adc97a",
    "lesions": "987602bac9b6efc6",
    "report": "dc82a114166eae31",
    "package": "331c1cec824365b6",
    "segmentation-supervised": "da41069abd3c12c8",
    "evaluate-supervised": "fd74be6faab98b94",
    "segmentation-mgcc-labeled": "5bb8af6933626937",
    "evaluate-mgcc-labeled": "4be3b9870b99b37c",
    "segmentation-mgcc-real": "adbe5a55a4a8b257",
    "evaluate-mgcc-real": "3d0ce1feef467116",
    "segmentation-mgcc-synthetic-pairs": "f382183b998cbda6",
    "evaluate-mgcc-synthetic-pairs": "646e47c484f4672a",
}
BEFORE = {
    "name": "before",
    "data": {"labeled_fraction": 0.125, "seed": 0, "phantom": {"n": 8, "size": 32, "seed": 0}},
    "ldm": {
        "common": {"spatial_size": [32, 32]},
        "autoencoder": {"max_epochs": 1},
        "diffusion": {"max_epochs": 1},
        "sample": {"num_samples": 4},
    },
    "segmentation": {
        "common": {"base_channels": 8},
        "train": {"unlabeled_source": "synthetic", "max_iterations": 2},
        "evaluate": {"flip_tta": False},
    },
}


def test_existing_runs_keep_their_fingerprints(tmp_path):
    """Every built-in stage of `mgcc run` and `mgcc compare` fingerprints what it runs with as before, so the complete
    stages of existing runs stay complete. Each bundle stage reads a stand-in bundle whose config texts are fixed
    (the real ones change with the bundles, and their fingerprints rightly with them)."""
    import dataclasses

    from mgcc.compare import plan
    from mgcc.pipeline import run_stages
    from mgcc.stages import Run, fingerprint_parts
    from mgcc.variants import run_variant

    bundle, out = tmp_path / "bundle", tmp_path / "run"
    (bundle / "configs").mkdir(parents=True)
    run = Run(BEFORE, out)
    stages = [*run_stages(run_variant(BEFORE)).values()]
    stages += [
        s for s in plan(run, ["supervised", "mgcc-labeled", "mgcc-real", "mgcc-synthetic-pairs"]) if "-" in s.name
    ]
    fingerprints = {}
    for stage in stages:
        for config in stage.configs:
            (bundle / "configs" / config).write_text(json.dumps({"config": config}))
        stage = dataclasses.replace(stage, bundle=bundle) if stage.bundle else stage
        (out / stage.name).mkdir(parents=True)
        write_record(out, StageResult(stage.name, 1.0, 1.0, inputs=fingerprint_parts(run, stage)))
        fingerprints[stage.name] = read_record(out, stage.name)["fingerprint"]
    assert fingerprints == FINGERPRINTS_BEFORE
