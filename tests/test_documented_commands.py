"""Every `python -m monai.bundle` / `torchrun` command of both bundles' READMEs runs as written.

The commands run in their order, from a copy of the bundle folder, on the phantom dataset: the README's example
paths become test folders, and each command gets the same small-run settings appended (tiny widths and sizes, two
iterations or one epoch) so that the trainings take seconds. Everything else (config files, ids, flags) is the
README's.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ldm_support import TINY

pytestmark = pytest.mark.integration

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
BUNDLE = BUNDLES / "ultrasound_mgcc_segmentation"
README = BUNDLE / "docs" / "README.md"
LDM_BUNDLE = BUNDLES / "ultrasound_ldm_generation"
#: appended to every segmentation command that runs a config (what it must not change is what the README says)
SMALL = {
    "base_channels": 8,
    "spatial_size": [64, 64],
    "max_iterations": 2,
    "val_interval": 1,
    "num_workers": 0,
    "show_progress": False,
}


def documented_commands(readme: Path) -> list[str]:
    """The README's code-block commands that start with `python -m monai.bundle` or `torchrun`, continuation lines
    joined."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", readme.read_text(), flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = " ".join(command.split())
            if command.startswith(("python -m monai.bundle", "torchrun")):
                commands.append(command)
    return commands


def as_test_command(command: str, paths: dict[str, Path], small: dict = SMALL) -> list[str]:
    for example, path in paths.items():
        command = command.replace(example, str(path))
    command = command.replace("[1,1,128,128]", "[1,1,64,64]")  # the export's example shape, at the test's size
    args = shlex.split(command)
    args[0] = sys.executable if args[0] == "python" else str(Path(sys.executable).parent / args[0])
    if "run" in args:
        for key, value in small.items():
            args += [f"--{key}", str(value)]  # Python literals: fire reads JSON's `false` as the string 'false'
    elif args[3] in ("ckpt_export", "onnx_export", "verify_net_in_out"):
        args += ["--base_channels", "8", "--spatial_size", "[64, 64]"]
    return args


def test_the_readme_lists_the_commands_a_user_needs():
    commands = documented_commands(README)
    for needed in (
        "configs/train.json",
        "train_supervised.json",
        "train_labeled_only.json",
        "evaluate.json",
        "configs/inference.json",
        "ckpt_export",
        "onnx_export",
        "multi_gpu_train.json",
        "--resume true",
    ):
        assert any(needed in c for c in commands), needed


def test_every_documented_bundle_command_runs(prepared_phantom, tmp_path):
    bundle = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("__pycache__", "eval", "*.pt", "*.ts", "*.onnx"))
    images = tmp_path / "new_images"
    images.mkdir()
    for entry in json.loads((prepared_phantom / "datalist.json").read_text())["test"][:3]:
        shutil.copy(prepared_phantom / entry["image"], images)
    samples = tmp_path / "ldm_samples"  # a mask-conditioned sampler's output: images, masks/, manifest.json
    shutil.copytree(images, samples)
    (samples / "masks").mkdir()
    records = []
    for entry in json.loads((prepared_phantom / "datalist.json").read_text())["test"][:3]:
        name = Path(entry["image"]).name
        shutil.copy(prepared_phantom / entry["label"], samples / "masks" / name)
        records.append({"file": name, "label": f"masks/{name}"})
    (samples / "manifest.json").write_text(json.dumps({"samples": records}))
    paths = {
        "/data/busi_prepared": prepared_phantom,
        "/data/new_images": images,
        "/data/masks": tmp_path / "masks",
        "/data/ldm_samples": samples,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    commands = documented_commands(README)
    assert len(commands) >= 12, commands
    for command in commands:
        args = as_test_command(command, paths)
        proc = subprocess.run(args, cwd=bundle, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    masks = sorted((tmp_path / "masks").glob("*_seg.png"))
    assert len(masks) >= 3, masks
    assert (bundle / "models" / "model.ts").is_file() and (bundle / "models" / "model.onnx").is_file()


def test_every_documented_generator_command_runs(prepared_phantom, tmp_path):
    """The LDM README's commands, with what its text says to add (`--dataset_dir`, `--output_dir`, `--ckpt_dir`)."""
    bundle = tmp_path / LDM_BUNDLE.name
    shutil.copytree(LDM_BUNDLE, bundle, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    small = {
        **TINY,
        "autoencoder_max_epochs": 1,
        "diffusion_max_epochs": 1,
        "val_interval": 1,
        "num_workers": 0,
        "dataset_dir": str(prepared_phantom),
        "output_dir": str(tmp_path / "logs"),
        "ckpt_dir": str(tmp_path / "weights"),
        "num_samples": 2,
        "num_inference_steps": 2,
    }
    paths = {"<prepared>": prepared_phantom, "<samples>": tmp_path / "samples"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    commands = documented_commands(LDM_BUNDLE / "docs" / "README.md")
    assert len(commands) >= 6, commands
    for command in commands:
        proc = subprocess.run(
            as_test_command(command, paths, small), cwd=bundle, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2
