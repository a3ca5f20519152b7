"""The trained models shipped in `bundles/*/models/`: they load with the configs' defaults and do their job.

The segmentation bundle's `inference.json`, run as a user runs it (no overrides), segments BUSI test-split
images of the release split (near-copies grouped, never seen in training) well above what an untrained network
reaches; the generator's weights load into the networks its `inference.json` defines by default.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mgcc import LDM_BUNDLE, SEG_BUNDLE
from mgcc.bundles import importable_as_scripts
from mgcc.data.validate import load_case

SEG_WEIGHTS = SEG_BUNDLE / "models" / "model.pt"
#: the mean Dice the shipped model must beat on the first lesion images of the release test split (about 0.74 on
#: all 129, see docs/results.md); an untrained network, or one whose weights are not loaded, scores far below
DICE_BOUND = 0.6
IMAGES = 12
#: the most a shipped weights file may weigh
MAX_BYTES = 40 * 2**20


def _defaults(bundle: Path, config: str, *keys: str) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    return {key: parser.get_parsed_content(key) for key in keys}


LDM_FILES = ("autoencoder.pt", "diffusion.pt", "diffusion_mask.pt", "perceptual_encoder.ts")


@pytest.mark.parametrize("path", [SEG_WEIGHTS, *(LDM_BUNDLE / "models" / name for name in LDM_FILES)])
def test_the_release_weights_are_shipped_and_small(path):
    assert path.is_file() and path.stat().st_size <= MAX_BYTES


def test_the_segmentation_weights_match_the_configs_defaults():
    weights = torch.load(SEG_WEIGHTS, map_location="cpu", weights_only=True)
    for config in ("train.json", "inference.json", "evaluate.json"):
        files = ["train.json", config] if config == "evaluate.json" else [config]
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(SEG_BUNDLE / "configs" / f) for f in files])
        assert weights["input_size"].tolist() == list(parser["spatial_size"]), config
    with importable_as_scripts(SEG_BUNDLE):
        network = _defaults(SEG_BUNDLE, "inference.json", "network_def")["network_def"]
    network.load_state_dict(weights)  # strict: the width and every layer agree


@pytest.mark.integration  # a model-loading subprocess: ~10 s, kept out of the default suite's budget
def test_the_shipped_generator_samples_with_the_configs_defaults(tmp_path):
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--sample_dir",
        str(tmp_path),
        "--num_samples",
        "2",
        "--num_inference_steps",
        "10",
    ]
    proc = subprocess.run(
        command, cwd=LDM_BUNDLE, env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    images = [np.asarray(Image.open(path)) for path in sorted(tmp_path.glob("*.png"))]
    size = _defaults(LDM_BUNDLE, "inference.json", "spatial_size")["spatial_size"]
    assert len(images) == 2 and all(image.shape == tuple(size) and image.std() > 10 for image in images)


@pytest.mark.integration  # a model-loading subprocess: ~15 s
def test_the_shipped_mask_conditional_generator_writes_each_sample_with_its_mask(tmp_path):
    masks, out = tmp_path / "masks", tmp_path / "out"
    masks.mkdir()
    yy, xx = np.mgrid[:200, :240]
    for i, (cy, cx) in enumerate([(80, 100), (120, 150)]):  # two elliptic "lesions", not of any dataset
        lesion = ((yy - cy) / 30.0) ** 2 + ((xx - cx) / 45.0) ** 2 <= 1
        Image.fromarray((lesion * 255).astype(np.uint8)).save(masks / f"mask_{i}.png")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--mask_conditional", "true", "--mask_dir", str(masks), "--sample_dir", str(out)]
    command += ["--num_samples", "2", "--num_inference_steps", "10"]
    proc = subprocess.run(
        command, cwd=LDM_BUNDLE, env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["diffusion"] == "diffusion_mask.pt" and manifest["settings"]["mask_conditional"]
    size = tuple(_defaults(LDM_BUNDLE, "inference.json", "spatial_size")["spatial_size"])
    for sample in manifest["samples"]:
        image, mask = np.asarray(Image.open(out / sample["file"])), np.asarray(Image.open(out / sample["label"]))
        assert image.shape == mask.shape == size and image.std() > 10 and 0 < (mask > 127).mean() < 0.5


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (prediction & truth).sum() / total)


def _infer_cases(cases: list, folder: Path) -> Path:
    """The cases' images copied to `folder/in`, run through the bundle's `inference.json` as a user runs it (defaults);
    returns its output folder."""
    inputs, out = folder / "in", folder / "out"
    inputs.mkdir()
    for case in cases:
        (inputs / f"{case.id}.png").write_bytes(case.image.read_bytes())
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    proc = subprocess.run(
        [*command, "--input_dir", str(inputs), "--output_dir", str(out)],
        cwd=SEG_BUNDLE,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_the_shipped_model_segments_held_out_busi_images(busi_release_with_normal_test_split, tmp_path):
    cases = [facts.case for facts in busi_release_with_normal_test_split if facts.case.label != "normal"][:IMAGES]
    out = _infer_cases(cases, tmp_path)
    scores = []
    said = {Path(r["image"]).stem: r for r in json.loads((out / "predictions.json").read_text())["results"]}
    for case in cases:
        _, truth, _ = load_case(case)
        prediction = np.asarray(Image.open(out / f"{case.id}_seg.png")) > 0
        scores.append(_dice(prediction, truth))
        assert said[case.id]["lesion"] == prediction.any() and said[case.id]["lesion_pixels"] == prediction.sum()
    assert np.mean(scores) > DICE_BOUND, json.dumps(
        dict(zip([c.id for c in cases], np.round(scores, 3).tolist(), strict=True))
    )


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="issue 40: 2.0.0 at its validation-chosen defaults leaves 12 of the 27 lesion-free test images empty "
    "(1.1.0: 0); strict: the test fails the suite once a shipped model passes it",
)
def test_the_shipped_model_leaves_most_lesion_free_test_images_empty(busi_release_with_normal_test_split, tmp_path):
    """BUSI's `normal` images of the release split's test section (held out): `inference.json` as a user runs it
    must answer "no lesion" (an empty mask, `lesion: false`) on most of them."""
    cases = [facts.case for facts in busi_release_with_normal_test_split if facts.case.label == "normal"]
    assert len(cases) >= 20
    out = _infer_cases(cases, tmp_path)
    results = json.loads((out / "predictions.json").read_text())["results"]
    empty = [not np.asarray(Image.open(out / r["mask"])).any() for r in results]
    assert [not r["lesion"] for r in results] == empty and len(results) == len(cases)
    assert np.mean(empty) > 0.5, f"a lesion drawn on {len(empty) - sum(empty)} of {len(empty)} lesion-free images"


def _segment(inputs: Path, out: Path, *overrides: str) -> tuple[dict[str, np.ndarray], str]:
    """The shipped model's masks of `inputs` by `inference.json` (+ overrides), and the precision its log names."""
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--input_dir",
        str(inputs),
        "--output_dir",
        str(out),
        *overrides,
    ]
    proc = subprocess.run(
        command, cwd=SEG_BUNDLE, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (proc.stdout + proc.stderr).splitlines()
    precision = [line.split("precision: ")[1] for line in log if "precision: " in line]
    masks = {p.name: np.asarray(Image.open(p)) > 0 for p in sorted(out.glob("*_seg.png"))}
    return masks, precision[-1] if precision else "not logged"


@pytest.mark.integration  # two inference runs over 42 images (bfloat16 runs through slow reference kernels on AVX2)
@pytest.mark.precision
def test_bfloat16_inference_of_the_shipped_model_keeps_float32_masks(stu_root, tmp_path):
    """`amp true` (bfloat16 autocast, what `auto` chose for inference on a CPU with bfloat16 in hardware until 1.2.0)
    against the default float32, on every STU-Hospital image (another hospital): the masks may differ only where a
    probability sits within bfloat16 rounding of 0.5. Bounds that the trained model meets (measured: mean mask Dice
    0.998, worst 0.990, at most 0.24% of an image's pixels differ; scripts/experiments/bf16_mask_agreement.py)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for image in sorted(stu_root.glob("Test_Image_*.png")):
        (inputs / image.name).write_bytes(image.read_bytes())
    fp32, fp32_precision = _segment(inputs, tmp_path / "fp32")
    bf16, bf16_precision = _segment(inputs, tmp_path / "bf16", "--amp", "true")
    assert (fp32_precision, bf16_precision) == ("float32", "bfloat16 autocast, channels-last")
    assert sorted(fp32) == sorted(bf16) and len(fp32) == 42
    agreement = {name: _dice(bf16[name], fp32[name]) for name in fp32}
    differing = {name: float((bf16[name] != fp32[name]).mean()) for name in fp32}
    assert np.mean(list(agreement.values())) >= 0.99, agreement
    assert min(agreement.values()) >= 0.9, agreement
    assert max(differing.values()) <= 0.01, differing
    assert sum(mask.any() for mask in fp32.values()) >= 40  # lesions were found: the comparison is not of empties
