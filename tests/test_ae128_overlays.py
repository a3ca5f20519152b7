"""The generator 2.0 screening overlays (`scripts/experiments/ae128/`): each merges after the bundle's
`train_autoencoder.json` into the 128x128 candidate the plan names, with the screening recipe."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from mgcc import LDM_BUNDLE, REPO_ROOT
from mgcc.bundles import importable_as_scripts

OVERLAYS = REPO_ROOT / "scripts" / "experiments" / "ae128"
#: candidate -> latent shape of a 128x128 image (plan stage 1: f4 lc4, f4 lc8, f8 lc8, f8 lc16)
CANDIDATES = {"s1": [4, 32, 32], "s2": [8, 32, 32], "s3": [8, 16, 16], "s4": [16, 16, 16]}


@pytest.mark.parametrize("candidate", sorted(CANDIDATES))
def test_overlay_builds_the_candidate_with_the_screening_recipe(candidate):
    parser = ConfigParser()
    bundle = LDM_BUNDLE / "configs" / "train_autoencoder.json"
    parser.read_config([str(f) for f in (bundle, OVERLAYS / "common.json", OVERLAYS / f"{candidate}.json")])
    parser["device"] = "$torch.device('cpu')"
    with importable_as_scripts(LDM_BUNDLE):
        network = parser.get_parsed_content("gnetwork")
        epochs = parser.get_parsed_content("autoencoder_max_epochs")
        warmup = parser.get_parsed_content("adv_warmup_epochs")
    with torch.no_grad():
        assert list(network.encode_stage_2_inputs(torch.zeros(1, 1, 128, 128)).shape[1:]) == CANDIDATES[candidate]
    assert parser["spatial_size"] == [128, 128] and epochs == 20 and warmup >= epochs  # no adversarial terms
    assert parser["use_perceptual_loss"] and parser["perceptual_in_channels"] == 1
    assert parser.get_parsed_content("perceptual_weights_path").endswith("models/perceptual_encoder.ts")  # shipped
    assert parser["decoder_noise_scale"] > 0
    assert parser["amp"] == "auto"
    assert parser["train#epoch_snapshots#n_saved"] is None and parser["train#epoch_snapshots#save_interval"] == 1
