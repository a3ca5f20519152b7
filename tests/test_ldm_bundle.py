"""LDM bundle as a MONAI bundle: property checks, config consistency, resume after a kill, torchrun (gloo)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from ldm_support import AE, BUNDLE, CONFIGS, DIFF, INFER, TINY, cli_args, run_bundle, run_cli

from mgcc.bundles import importable_as_scripts


def _workflow(config_files, workflow_type, **overrides):
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=config_files, meta_file=str(CONFIGS / "metadata.json"), workflow_type=workflow_type, **overrides
    )


def test_metadata_and_layout():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "changelog", "name", "task"):
        assert key in metadata
    assert metadata["version"] in metadata["changelog"]
    for section in ("autoencoder_data_format", "network_data_format"):
        assert {"inputs", "outputs"} <= set(metadata[section])
    for name in ("LICENSE", "docs/README.md", "docs/data_license.txt", "configs/logging.conf", "models/.gitkeep"):
        assert (BUNDLE / name).is_file(), name


def test_inference_networks_match_training():
    """inference.json repeats the network and schedule definitions (as the zoo does): they must stay identical."""
    from monai.bundle import ConfigParser

    train, infer = ConfigParser(), ConfigParser()
    train.read_config([AE, DIFF])
    infer.read_config(INFER)
    assert train["autoencoder_def"] == infer["autoencoder_def"]
    assert train["network_def"] == infer["network_def"]
    for key in ("schedule", "num_train_timesteps", "beta_start", "beta_end"):
        assert train[f"noise_scheduler#{key}"] == infer[f"noise_scheduler#{key}"], key
    # plain values (sizes, widths, class names, ...) must agree; components and expressions differ on purpose, and
    # sampling takes the prediction type from the checkpoint (null)
    assert infer["prediction_type"] is None
    for key in sorted(set(train.config) & set(infer.config) - {"batch_size", "prediction_type"}):
        if isinstance(infer[key], dict) or key in ("imports", "run") or str(infer[key]).startswith("$"):
            continue
        assert train[key] == infer[key], f"default of '{key}' differs between the training configs and inference.json"


@pytest.mark.integration
def test_perceptual_loss_needs_weights_and_uses_them(prepared_phantom, tmp_path):
    import torch

    common = dict(dataset_dir=str(prepared_phantom), output_dir=str(tmp_path / "out"), ckpt_dir=str(tmp_path / "c"))
    with importable_as_scripts(BUNDLE):
        workflow = _workflow([AE], "train", use_perceptual_loss=True, perceptual_weights_path=None, **common, **TINY)
        workflow.initialize()
        with pytest.raises(Exception) as err:
            workflow.parser.get_parsed_content("perceptual_loss")
        messages = []
        e = err.value
        while e is not None:
            messages.append(str(e))
            e = e.__cause__
        assert any("weights path is not set" in m for m in messages)

    # a feature network made here, exported as the loss expects (TorchScript), returning two feature maps
    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x):
            a = torch.relu(self.a(x))
            return [a, self.b(a)]

    weights = tmp_path / "features.ts"
    torch.jit.save(torch.jit.script(Features()), str(weights))
    run_bundle(
        [AE],
        **common,
        **TINY,
        use_perceptual_loss=True,
        perceptual_weights_path=str(weights),
        perceptual_in_channels=3,
        autoencoder_max_epochs=1,
    )
    with open(tmp_path / "out" / "autoencoder_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["perceptual_loss"]) > 0 for r in rows)


@pytest.mark.integration
def test_killed_training_resumes(prepared_phantom, tmp_path):
    overrides = dict(
        dataset_dir=str(prepared_phantom),
        output_dir=str(tmp_path / "out"),
        ckpt_dir=str(tmp_path / "ckpt"),
        autoencoder_max_epochs=4,
        val_interval=10,
        **TINY,
    )
    process = subprocess.Popen(
        cli_args([AE], **overrides), cwd=BUNDLE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 240
    try:  # once epoch 2's checkpoint appears, epoch 1's is complete; kill wherever the run is then
        while not list((tmp_path / "ckpt").glob("autoencoder_resume_checkpoint_epoch=[2-9].pt")):
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "no resume checkpoint written"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert not (tmp_path / "ckpt" / "autoencoder.pt").exists(), "the first run finished before it was killed"
    # the newest checkpoint cut short, as a kill while saving leaves it: the one before must be used
    saved = sorted((tmp_path / "ckpt").glob("autoencoder_resume_checkpoint_epoch=*.pt"))
    assert len(saved) == 2, saved
    saved[-1].write_bytes(saved[-1].read_bytes()[:1000])
    resumed_from = int(re.search(r"=(\d+)\.pt$", saved[0].name).group(1))
    assert resumed_from < 4

    result = run_cli([AE], **overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [int(m) for m in re.findall(r"Epoch: (\d+)/4, Iter", result.stdout + result.stderr)]
    assert epochs and min(epochs) == resumed_from + 1 and max(epochs) == 4
    assert (tmp_path / "ckpt" / "autoencoder.pt").is_file()
    with open(tmp_path / "out" / "autoencoder_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    iterations = [int(r["iteration"]) for r in rows]
    assert iterations == list(range(1, len(iterations) + 1)), "history must hold each iteration exactly once"
    assert int(rows[-1]["epoch"]) == 4


@pytest.mark.integration
def test_multi_gpu_configs_under_torchrun_gloo(prepared_phantom, tmp_path):
    """Both training stages with torchrun, 2 processes, gloo on CPU (nccl where CUDA is available)."""
    overrides = dict(
        dataset_dir=str(prepared_phantom), output_dir=str(tmp_path / "out"), ckpt_dir=str(tmp_path / "ckpt"), **TINY
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    stages = [
        (
            [AE, str(CONFIGS / "multi_gpu_train_autoencoder.json")],
            dict(autoencoder_max_epochs=2, adv_warmup_epochs=1, val_interval=1),
        ),
        (
            [
                AE,
                DIFF,
                str(CONFIGS / "multi_gpu_train_autoencoder.json"),
                str(CONFIGS / "multi_gpu_train_diffusion.json"),
            ],
            dict(diffusion_max_epochs=1),
        ),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for configs, extra in stages:
        args = cli_args(configs, **overrides, **extra)
        result = subprocess.run(torchrun + args[1:], cwd=BUNDLE, capture_output=True, text=True, timeout=400, env=env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    factors = re.findall(r"latent normalisation \(channel\): (.+)", result.stdout + result.stderr)
    assert len(factors) == 2 and factors[0] == factors[1], (
        f"both ranks must train with the same normalisation: {factors}"
    )
    for name in ("autoencoder.pt", "diffusion.pt"):
        assert (tmp_path / "ckpt" / name).is_file()
    with open(tmp_path / "out" / "autoencoder_validation.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
