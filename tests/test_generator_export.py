"""`mgcc export` of a generator: the packaged bundle keeps its perceptual network and says what its UNet predicts."""

import json
import shutil

import pytest
import torch

from mgcc import LDM_BUNDLE
from mgcc.export import install_generator


def a_trained_run(folder, prediction_type):
    """The files `install_generator` reads from a run: stage settings and the two weight files."""
    for stage in ("autoencoder", "diffusion", "sample"):
        (folder / stage).mkdir(parents=True)
        (folder / stage / "args.json").write_text(json.dumps({"num_samples": 4}))
    (folder / "ldm_models").mkdir()
    (folder / "ldm_models" / "autoencoder.pt").write_bytes(b"autoencoder weights")
    torch.save({"settings": {"prediction_type": prediction_type}}, folder / "ldm_models" / "diffusion.pt")
    return folder


@pytest.mark.parametrize(
    "prediction_type, predicted", [("epsilon", "predicted noise"), ("v_prediction", "predicted velocity")]
)
def test_the_packaged_generator_describes_its_output_and_keeps_its_perceptual_network(
    tmp_path, prediction_type, predicted
):
    run = a_trained_run(tmp_path / "run", prediction_type)
    bundle = tmp_path / "bundle"
    shutil.copytree(LDM_BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "__pycache__"))
    install_generator(run, bundle)
    perceptual = bundle / "models" / "perceptual_encoder.ts"  # train_autoencoder.json's default perceptual network
    assert perceptual.read_bytes() == (LDM_BUNDLE / "models" / "perceptual_encoder.ts").read_bytes()
    pred = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]
    assert set(pred["channel_def"].values()) == {predicted}
