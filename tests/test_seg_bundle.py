"""The MGCC segmentation bundle run as processes (`python -m monai.bundle ...`) on the phantom dataset."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from mgcc.bundles import import_bundle_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"
# tiny settings shared by every run: 64x64 phantom images, width 8
TINY = ["--spatial_size", "[64,64]", "--base_channels", "8", "--num_workers", "0", "--show_progress", "false"]
ITERATIONS, VAL_INTERVAL = 40, 20

# whole trainings and exports as processes (about 2 minutes on 2 cores): part of `make test`, not the default run
pytestmark = pytest.mark.integration


def bundle(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle <args>` from the bundle folder (one thread: the machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=BUNDLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"monai.bundle {args[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def run_config(configs, **overrides) -> subprocess.CompletedProcess:
    files = configs if isinstance(configs, str) else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    flat = [x for k, v in overrides.items() for x in (f"--{k}", str(v))]
    return bundle("run", "--config_file", files, *flat, *TINY)


def read_history(path: Path) -> tuple[list[dict], list[dict]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r["loss"]], [r for r in rows if r["val_dice"]]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    if not a.any() and not b.any():
        return 1.0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def trained(prepared_phantom, tmp_path_factory):
    """One short MGCC training run on the phantom dataset (real remainder as the unlabeled set)."""
    root = tmp_path_factory.mktemp("mgcc_run")
    run_config(
        "configs/train.json",
        dataset_dir=prepared_phantom,
        output_dir=root / "eval",
        ckpt_dir=root / "models",
        max_iterations=ITERATIONS,
        val_interval=VAL_INTERVAL,
    )
    return root


def test_training_reduces_the_loss_and_writes_the_learning_curve(trained):
    train_rows, val_rows = read_history(trained / "eval" / "training_history.csv")
    assert [int(r["iteration"]) for r in train_rows] == list(range(1, ITERATIONS + 1))
    assert [int(r["iteration"]) for r in val_rows] == [VAL_INTERVAL, 2 * VAL_INTERVAL]
    losses = [float(r["supervised_loss"]) for r in train_rows]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.05
    assert all(float(r["consistency_loss"]) > 0 for r in train_rows)
    assert (trained / "models" / "model.pt").is_file()
    assert list((trained / "eval").glob("events.out.tfevents.*")), "TensorBoard logs missing"
    # model.pt holds network weights only, loadable with weights_only=True
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values()) and "main_decoder.head.weight" in state


def test_consistency_weight_follows_the_sigmoid_rampup(trained):
    train_rows, _ = read_history(trained / "eval" / "training_history.csv")
    ramp = int(1.5 * ITERATIONS)  # default: T scaled to max_iterations as in the reference (30k of 20k)
    for r in train_rows:
        t = int(r["iteration"]) - 1
        expected = 7.0 * math.exp(-5.0 * (1.0 - min(t, ramp) / ramp) ** 2)
        assert float(r["consistency_weight"]) == pytest.approx(expected, rel=1e-9)


def test_poly_learning_rate_ends_at_zero_at_the_last_iteration(trained):
    train_rows, _ = read_history(trained / "eval" / "training_history.csv")
    lrs = [float(r["lr"]) for r in train_rows]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(0.01 * (1 / ITERATIONS) ** 0.9, rel=1e-6)  # last step's lr
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    last = torch.load(trained / "models" / f"checkpoint_epoch={ITERATIONS // VAL_INTERVAL}.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert last["trainer"]["iteration"] == ITERATIONS


def test_evaluation_beats_an_untrained_network(trained, prepared_phantom, tmp_path):
    run_config(
        ["configs/train.json", "configs/evaluate.json"],
        dataset_dir=prepared_phantom,
        output_dir=trained / "eval",
        ckpt_dir=trained / "models",
    )
    result_dir = trained / "eval" / "evaluation"
    summary = json.loads((result_dir / "summary.json").read_text())
    with open(result_dir / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_test = len(json.loads((prepared_phantom / "datalist.json").read_text())["test"])
    assert summary["n"] == len(rows) == n_test
    assert summary["dice"]["mean"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))
    for tag in ("best", "median", "worst"):
        assert (result_dir / f"overlay_{tag}.png").stat().st_size > 0

    # the same evaluation with an untrained network of the same architecture
    MGCCNet = import_bundle_scripts(BUNDLE).network.MGCCNet
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(MGCCNet(base_channels=8).state_dict(), tmp_path / "models" / "model.pt")
    run_config(
        ["configs/train.json", "configs/evaluate.json"],
        dataset_dir=prepared_phantom,
        output_dir=tmp_path / "eval",
        ckpt_dir=tmp_path / "models",
    )
    untrained = json.loads((tmp_path / "eval" / "evaluation" / "summary.json").read_text())
    assert summary["dice"]["mean"] > untrained["dice"]["mean"] + 0.2


def test_inference_writes_binary_masks_at_the_original_size(trained, prepared_phantom, tmp_path):
    # a datalist section as input: masks must line up with the labels at the original size
    run_config(
        "configs/inference.json",
        dataset_dir=prepared_phantom,
        datalist=prepared_phantom / "datalist.json",
        datalist_section="test",
        output_dir=tmp_path / "pred",
        ckpt_dir=trained / "models",
    )
    test = json.loads((prepared_phantom / "datalist.json").read_text())["test"]
    scores = []
    for entry in test:
        stem = Path(entry["image"]).name[: -len(".png")]
        mask = np.asarray(Image.open(tmp_path / "pred" / f"{stem}_seg.png"))
        label = np.asarray(Image.open(prepared_phantom / entry["label"])) > 0
        assert mask.dtype == np.uint8 and mask.shape == label.shape
        assert set(np.unique(mask)) <= {0, 255}
        scores.append(dice(mask > 0, label))
    assert np.mean(scores) > 0.3, f"masks do not line up with the labels (mean Dice {np.mean(scores):.3f})"

    # a folder of mixed inputs: non-square grayscale, RGB, and a one-slice NIfTI
    import nibabel as nib

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    gray = (rng.random((50, 90)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(folder / "wide.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(folder / "colour.png")
    nib.save(nib.Nifti1Image(gray.T[..., None].astype(np.float32), np.eye(4)), folder / "slice.nii.gz")
    run_config(
        "configs/inference.json",
        dataset_dir=prepared_phantom,
        input_dir=folder,
        output_dir=tmp_path / "pred_folder",
        ckpt_dir=trained / "models",
    )
    for name in ("wide", "colour"):
        assert Image.open(tmp_path / "pred_folder" / f"{name}_seg.png").size == (90, 50)
    mask = nib.load(tmp_path / "pred_folder" / "slice_seg.nii.gz")  # NIfTI in, NIfTI out, on the input's grid
    assert mask.shape[:2] == (90, 50) and np.array_equal(mask.affine, np.eye(4))


def test_bundle_checks_and_torchscript_export(trained, prepared_phantom, tmp_path):
    check = (
        "from monai.bundle import ConfigWorkflow\n"
        "w = ConfigWorkflow(config_file='configs/train.json', workflow_type='train', "
        f"dataset_dir='{prepared_phantom}')\n"
        "w.initialize(); assert w.check_properties() in (None, []), w.check_properties()\n"
        "w = ConfigWorkflow(config_file='configs/inference.json', workflow_type='infer', "
        f"dataset_dir='{prepared_phantom}')\n"
        "w.initialize(); assert w.check_properties() in (None, []), w.check_properties()\n"
        "print('properties ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert "properties ok" in proc.stdout, proc.stderr[-3000:]

    bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--base_channels",
        "8",
    )
    ts = tmp_path / "model.ts"
    bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(trained / "models" / "model.pt"),
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--base_channels",
        "8",
    )
    scripted = torch.jit.load(str(ts))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    net = import_bundle_scripts(BUNDLE).network.MGCCNet(base_channels=8, flip_tta=parser["flip_tta"])
    net.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    net.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


@pytest.mark.precision
def test_onnx_export_runs_in_onnx_runtime_with_the_checkpoints_masks(trained, prepared_phantom, tmp_path):
    """`onnx_export` + `configs/inference_onnx.json` (ONNX Runtime) give the masks of the PyTorch checkpoint, float32
    against float32 (`inference.json` runs float32 on every machine)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes((trained / "models" / "model.pt").read_bytes())
    bundle(
        "onnx_export",
        "network_def",
        "--filepath",
        str(models / "model.onnx"),
        "--ckpt_file",
        str(models / "model.pt"),
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--base_channels",
        "8",
        "--use_trace",
        "True",
        "--input_shape",
        "[1,1,64,64]",
        "--converter_kwargs",
        "{'dynamo': False}",
    )
    common = dict(dataset_dir=prepared_phantom, datalist=prepared_phantom / "datalist.json", ckpt_dir=models)
    run_config("configs/inference.json", output_dir=tmp_path / "torch", **common)
    run_config(["configs/inference.json", "configs/inference_onnx.json"], output_dir=tmp_path / "onnx", **common)
    masks = sorted((tmp_path / "torch").glob("*_seg.png"))
    assert len(masks) == len(json.loads((prepared_phantom / "datalist.json").read_text())["test"])
    same = [np.mean(np.asarray(Image.open(m)) == np.asarray(Image.open(tmp_path / "onnx" / m.name))) for m in masks]
    assert min(same) > 0.999, f"ONNX Runtime masks differ from the checkpoint's: pixel agreement {min(same):.4f}"
    assert any(np.asarray(Image.open(m)).any() for m in masks), "no lesion found at all: nothing was compared"


@pytest.mark.parametrize(
    "override, message",
    [
        (["--base_channels", "16"], "trained with base_channels 8, the config says 16: run with --base_channels 8"),
        (["--spatial_size", "[128, 128]"], "trained at spatial_size [64, 64], the config says [128, 128]"),
    ],
)
def test_a_checkpoint_refuses_a_config_of_another_width_or_size(trained, prepared_phantom, tmp_path, override, message):
    """Settings travel with the weights: inference with another width or size stops with one line naming both
    values, before any mask is written."""
    out = tmp_path / "masks"
    args = [
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(prepared_phantom),
        "--ckpt_dir",
        str(trained / "models"),
        "--output_dir",
        str(out),
        *TINY,
        *override,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""},
        timeout=600,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() or not list(out.glob("*_seg.png"))


@pytest.mark.precision
def test_score_config_ranks_images_by_decoder_disagreement_and_keeps_the_masks(trained, prepared_phantom, tmp_path):
    """`inference.json` + `score.json`: the same masks (both float32), plus `disagreement.json` (one score per image,
    highest
    first, the same on a rerun) and, on request, the per-pixel maps."""
    common = dict(
        dataset_dir=prepared_phantom, datalist=prepared_phantom / "datalist.json", ckpt_dir=trained / "models"
    )
    run_config("configs/inference.json", output_dir=tmp_path / "plain", **common)
    for run in ("scored", "again"):
        run_config(
            ["configs/inference.json", "configs/score.json"],
            output_dir=tmp_path / run,
            save_disagreement_maps="true",
            **common,
        )
    test = json.loads((prepared_phantom / "datalist.json").read_text())["test"]
    report = json.loads((tmp_path / "scored" / "disagreement.json").read_text())
    assert sorted(report["scores"]) == sorted(Path(e["image"]).stem for e in test)
    assert list(report["scores"].values()) == sorted(report["scores"].values(), reverse=True)
    assert report == json.loads((tmp_path / "again" / "disagreement.json").read_text())
    for name in report["scores"]:
        mask = np.asarray(Image.open(tmp_path / "scored" / f"{name}_seg.png"))
        assert np.array_equal(mask, np.asarray(Image.open(tmp_path / "plain" / f"{name}_seg.png")))
        assert np.asarray(Image.open(tmp_path / "scored" / f"{name}_disagreement.png")).shape == (64, 64)
