"""The demo pipeline end to end through the real CLI, cut to a minimal budget: artefacts, rerun, kill + resume."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_deploy import deploy_python, run_app  # noqa: F401 (a fixture: the Deploy app's virtual environment)
from test_monailabel import label_env, running_server  # noqa: F401 (a fixture: the MONAI Label environment)

from mgcc.monailabel.launcher import label_client, prepare_app
from mgcc.presets import load_preset

pytestmark = pytest.mark.integration

STAGES = [
    "prepare",
    "autoencoder",
    "diffusion",
    "sample",
    "quality",
    "segmentation-mgcc-synthetic",
    "evaluate-mgcc-synthetic",
    "lesions",
    "report",
    "package",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory) -> Path:
    """The demo preset with every budget cut to seconds (same stages, same bundles)."""
    preset = load_preset("demo")
    preset.pop("name")
    preset["data"]["phantom"].update(n=24, size=48)
    preset["ldm"]["common"].update(
        spatial_size=[32, 32],
        latent_channels=2,
        ae_channels=[8, 16],
        ae_norm_num_groups=8,
        ae_nonlocal_attn=False,
        disc_channels=8,
        disc_num_layers=2,
        dm_channels=[16, 32],
        dm_attention_levels=[False, True],
        dm_num_head_channels=[0, 16],
        dm_norm_num_groups=8,
        batch_size=4,
    )
    preset["ldm"]["autoencoder"] = {"autoencoder_max_epochs": 1}
    preset["ldm"]["diffusion"].update(diffusion_max_epochs=1)
    preset["ldm"]["sample"].update(num_samples=6, num_inference_steps=3)
    preset["segmentation"]["common"].update(spatial_size=[32, 32], base_channels=4, num_workers=0, show_progress=False)
    preset["segmentation"]["train"].update(max_iterations=6, val_interval=3)
    path = tmp_path_factory.mktemp("preset") / "tiny-demo.json"
    path.write_text(json.dumps(preset))
    return path


def mgcc_run(preset: Path, out: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mgcc", "run", "--preset", str(preset), "--out", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        **kwargs,
    )


def record_times(out: Path) -> dict[str, float]:
    return {s: (out / s / "stage.json").stat().st_mtime for s in STAGES if (out / s / "stage.json").exists()}


def test_demo_killed_resumes_end_to_end_serves_and_rerun_skips(tiny_preset, tmp_path, deploy_python, label_env):  # noqa: F811
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgcc", "run", "--preset", str(tiny_preset), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "diffusion" / "args.json").exists():  # the diffusion stage has started
        assert proc.poll() is None, "the run ended before the diffusion stage started"
        assert time.monotonic() < deadline, "the diffusion stage did not start in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = record_times(out)
    assert set(done) == {"prepare", "autoencoder"}

    first = mgcc_run(tiny_preset, out)  # resumes: the finished stages are not redone
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "stage 'autoencoder' is complete: skipped" in first.stdout
    assert {s: t for s, t in record_times(out).items() if s in done} == done
    assert f"[mgcc] report: {out / 'report' / 'report.md'}" in first.stdout

    for stage in STAGES:
        record = json.loads((out / stage / "stage.json").read_text())
        assert record["seconds"] > 0 and record["peak_rss_mb"] > 0
        # every stage that runs the segmentation network says in what precision
        assert ("precision" in record) == (
            stage in ("segmentation-mgcc-synthetic", "evaluate-mgcc-synthetic", "lesions")
        )
    samples = sorted((out / "sample" / "images").glob("*.png"))
    assert len(samples) == 6
    summary = json.loads((out / "evaluate-mgcc-synthetic" / "evaluation" / "summary.json").read_text())
    with open(out / "evaluate-mgcc-synthetic" / "evaluation" / "per_image.csv") as f:
        per_image = [float(row["dice"]) for row in csv.DictReader(f)]
    assert len(per_image) == summary["n"] and abs(np.mean(per_image) - summary["dice"]["mean"]) < 1e-6
    report = (out / "report" / "report.md").read_text()
    for section in (
        "Data and split",
        "Learning curves",
        "Real vs synthetic",
        "Generator quality",
        "Test metrics",
        "Lesions found",
        "peak memory",
    ):
        assert section in report
    figures = sorted((out / "report" / "figures").glob("*.png"))
    assert len(figures) >= 4  # learning curves of 3 trainings + the real-vs-synthetic grid (+ overlays)
    for figure in figures:
        with Image.open(figure) as image:
            image.verify()
        assert f"figures/{figure.name}" in report
    assert "<table>" in (out / "report" / "report.html").read_text()
    numbers = json.loads((out / "report" / "summary.json").read_text())
    rates = json.loads((out / "lesions" / "lesion_rate.json").read_text())
    assert numbers["synthetic_lesion_rate"] == rates["synthetic"]["rate"] and rates["synthetic"]["images"] == 6
    assert (
        numbers["synthetic_mask_dice"] == rates["synthetic"]["mask_dice"] and rates["synthetic"]["mask_dice"]["n"] == 6
    )
    real = rates["real_test"]
    assert numbers["real_test_lesion_rate"] == real["rate"] == real["with_clear_lesion"] / real["images"]
    assert real["images"] == summary["n"] and numbers["test"]["evaluate-mgcc-synthetic"]["n"] == summary["n"]
    assert numbers["generator"]["fid"]["num_generated"] == 6 and "kid" in numbers["generator"]

    # the packaged bundle runs with no overrides, and it, the Deploy app and a MONAI Label server serving it give the
    # pipeline's own masks
    package = out / "package" / "ultrasound_mgcc_segmentation"
    assert json.loads((package / "configs" / "metadata.json").read_text())["eval_metrics"]["test_mean_dice"] == round(
        summary["dice"]["mean"], 4
    )
    tests = tmp_path / "test_images"
    tests.mkdir()
    datalist = json.loads((out / "prepare" / "dataset" / "datalist.json").read_text())
    for entry in datalist["test"]:
        shutil.copy(out / "prepare" / "dataset" / entry["image"], tests)
    bundle_out, app_out = tmp_path / "bundle_out", tmp_path / "app_out"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--input_dir",
            str(tests),
            "--output_dir",
            str(bundle_out),
        ],
        cwd=package,
        check=True,
        capture_output=True,
        env=ENV,
    )
    run_app(deploy_python, tests, app_out, package)
    # the packaged generator carries the run's labeled masks and, with no overrides, gives the run's first samples
    generator, packaged = out / "package" / "ultrasound_ldm_generation", tmp_path / "packaged_samples"
    data_format = json.loads((generator / "configs" / "metadata.json").read_text())["network_data_format"]
    latent = data_format["outputs"]["pred"]["num_channels"]
    assert data_format["inputs"]["image"]["num_channels"] == latent + 1  # the demo model is mask-conditioned
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--sample_dir",
            str(packaged),
            "--num_samples",
            "2",
        ],
        cwd=generator,
        check=True,
        capture_output=True,
        env=ENV,
    )
    samples = out / "sample" / "images"
    for name in ("sample_00000.png", "sample_00001.png"):
        assert np.array_equal(
            np.array(Image.open(samples / "masks" / name)), np.array(Image.open(packaged / "masks" / name))
        ), name
        difference = np.array(Image.open(samples / name), int) - np.array(Image.open(packaged / name), int)
        assert np.abs(difference).max() <= 1, name  # another batch shape: at most one gray level of float rounding
    pipeline_masks = sorted((out / "lesions" / "real_test").glob("*_seg.png"))
    assert len(pipeline_masks) == len(datalist["test"])
    for mask in pipeline_masks:
        expected = np.array(Image.open(mask))
        assert np.array_equal(np.array(Image.open(bundle_out / mask.name)), expected), mask.name
        assert np.array_equal(np.array(Image.open(app_out / "masks" / mask.name.replace("_seg", ""))) > 0, expected > 0)
    app, name = prepare_app(tmp_path / "label", package, studies=tests)
    with running_server(app, tests, name, tmp_path / "label" / "server.log") as (url, _, info):
        assert name in info["models"]
        for mask in pipeline_masks:
            answer = label_client(
                url,
                "infer",
                name,
                "--image",
                mask.name.replace("_seg.png", ""),
                "--out",
                tmp_path / "served" / mask.name,
            )
            assert answer["status"] == 200, answer
            served = np.asarray(Image.open(answer["answer"]["out"]))
            assert np.array_equal(served > 0, np.array(Image.open(mask)) > 0), mask.name

    before = record_times(out)
    second = mgcc_run(tiny_preset, out)
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in STAGES:
        assert f"stage '{stage}' is complete: skipped" in second.stdout
    assert record_times(out) == before

    # the training stage as a kill after its last validation, before its last checkpoint, leaves it: the rerun
    # resumes from the checkpoint before
    models = out / "segmentation-mgcc-synthetic" / "models"
    (models / "checkpoint_epoch=2.pt").unlink()
    (out / "segmentation-mgcc-synthetic" / "stage.json").unlink()
    third = mgcc_run(tiny_preset, out)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert f"Restored all variables from {models / 'checkpoint_epoch=1.pt'}" in third.stdout
    assert "Epoch: 2/2, Iter: 1/3" in third.stdout and "Epoch: 1/2" not in third.stdout
    assert (models / "checkpoint_epoch=2.pt").is_file() and not list(out.glob("segmentation*.stale-*"))


def test_compare_over_two_seeds_then_an_external_test(tiny_preset, tmp_path):
    out = tmp_path / "compare"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgcc",
            "compare",
            "--preset",
            str(tiny_preset),
            "--out",
            str(out),
            "--variants",
            "supervised,mgcc-labeled",
            "--seeds",
            "0,1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "compare" / "compare.md").read_text()
    assert "| supervised |" in table and "| mgcc-labeled |" in table and "Dice minus supervised" in table
    report = json.loads((out / "compare" / "compare.json").read_text())
    assert report["seeds"] == [0, 1] and set(report["per_seed"]) == {"0", "1"}
    assert set(report["summary"]) == {"supervised", "mgcc-labeled"}
    n = sum(report["per_seed"][s]["results"]["supervised"]["n"] for s in ("0", "1"))
    assert report["paired_dice_differences"]["mgcc-labeled"]["n"] == n
    for folder in (out, out / "seed-1"):  # seed 0 is the preset's: it runs in OUT itself
        for stage in ("segmentation-supervised", "evaluate-mgcc-labeled"):
            assert (folder / stage / "stage.json").is_file()
        assert not (folder / "sample").exists()  # no variant needs synthetic images
    splits = [json.loads((f / "prepare" / "dataset" / "datalist.json").read_text()) for f in (out, out / "seed-1")]
    assert splits[0]["test"] != splits[1]["test"]  # the seed sets the split

    # the trained model scored on another phantom dataset, at the model's own size, listed in a report
    other = tmp_path / "other"
    subprocess.run(
        [sys.executable, "-m", "mgcc", "phantom", "--out", str(other), "--n", "10", "--size", "40", "--seed", "7"],
        check=True,
        capture_output=True,
        env=ENV,
    )
    external = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgcc",
            "evaluate",
            "--model",
            str(out / "segmentation-mgcc-labeled"),
            "--data",
            str(other),
            "--section",
            "all",
            "--include-normal",
        ],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert external.returncode == 0, external.stdout[-3000:] + external.stderr[-3000:]
    result = out / "external" / "other-all" / "evaluate" / "evaluation"
    summary = json.loads((result / "summary.json").read_text())
    assert summary["n"] == 10 and (result / "per_image.csv").is_file() and (result / "overlay_worst.png").is_file()
    assert summary["images_seen_in_training"] == 0
    own = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgcc",
            "evaluate",
            "--model",
            str(out / "segmentation-mgcc-labeled"),
            "--data",
            str(out / "prepare" / "dataset"),
            "--section",
            "all",
            "--out",
            str(tmp_path / "own"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert own.returncode == 0, own.stdout[-3000:] + own.stderr[-3000:]
    seen = json.loads((tmp_path / "own" / "evaluate" / "evaluation" / "summary.json").read_text())
    assert 0 < seen["images_seen_in_training"] < seen["n"]  # its training and validation images, not its test split
    assert f"{seen['images_seen_in_training']} of them seen in training: not a held-out test" in own.stdout
    args = json.loads((out / "external" / "other-all" / "evaluate" / "args.json").read_text())
    assert args["spatial_size"] == [32, 32] and args["base_channels"] == 4
    assert args["config_file"][1].endswith("train_labeled_only.json")

    unknown = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgcc",
            "compare",
            "--preset",
            str(tiny_preset),
            "--out",
            str(out),
            "--variants",
            "mgcc-imaginary",
        ],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert unknown.returncode != 0 and "mgcc-imaginary" in unknown.stderr + unknown.stdout


def test_a_pip_installed_wheel_runs_the_pipeline_from_another_folder(tiny_preset, tmp_path):
    """`pip install .` (not editable) carries both bundles and the presets: a user runs `mgcc` from any folder."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a clean copy: no build/ folder left by an earlier build can fill the wheel
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True, check=True).stdout
    for name in filter(None, tracked.split("\0")):
        if (repo / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
        env=ENV,
    )
    site = tmp_path / "site"  # the wheel alone, ahead of the checkout's editable install on the path
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), *map(str, (tmp_path / "wheel").glob("*.whl"))],
        check=True,
        capture_output=True,
        env=ENV,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**ENV, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mgcc; from mgcc.presets import load_preset; "
            "print(mgcc.__file__, mgcc.SEG_BUNDLE, load_preset('demo')['name'])",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    assert where[0].startswith(str(site)) and where[1].startswith(str(site)) and where[2] == "demo", where
    shipped = sorted(p.relative_to(site) for p in site.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    launcher, app = Path("mgcc", "monailabel"), Path("mgcc", "_monailabel_app")  # src/mgcc/monailabel, apps/monailabel
    assert {launcher / "launcher.py", launcher / "client.py", app / "setup_env.sh", app / "app/main.py"} <= set(shipped)

    # one stage of each bundle (the segmentation with real unlabeled images, so it needs only `prepare`)
    preset = json.loads(tiny_preset.read_text())
    preset["segmentation"]["train"]["unlabeled_source"] = "real"
    (elsewhere / "tiny-real.json").write_text(json.dumps(preset))
    for stage in ("prepare", "autoencoder", "segmentation"):
        proc = subprocess.run(
            [sys.executable, "-m", "mgcc", "run", "--preset", "tiny-real.json", "--stage", stage],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = elsewhere / "outputs" / "tiny-real"  # the default output folder is under the working folder
    assert (out / "ldm_models" / "autoencoder.pt").is_file() and (
        out / "segmentation-mgcc-real" / "models" / "model.pt"
    ).is_file()
    after = sorted(p.relative_to(site) for p in site.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert after == shipped, "a run wrote into the installed package"
