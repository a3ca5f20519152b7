"""`scripts/export_perceptual_encoder.py`: the segmentation encoder as a TorchScript file that the generator's
perceptual loss loads (a randomly initialised MGCCNet, so the shipped weights are not needed)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from mgcc import LDM_BUNDLE, REPO_ROOT, SEG_BUNDLE
from mgcc.bundles import import_bundle_scripts


@pytest.fixture(scope="module")
def exporter():
    spec = importlib.util.spec_from_file_location(
        "export_perceptual_encoder", REPO_ROOT / "scripts" / "export_perceptual_encoder.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(exporter, tmp_path_factory):
    """A width-4 MGCCNet with random weights and batch-norm statistics, saved as training saves it, and its export."""
    torch.manual_seed(0)
    network = import_bundle_scripts(SEG_BUNDLE).network.MGCCNet(base_channels=4, input_size=[32, 32]).eval()
    for norm in network.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("perceptual")
    torch.save({"model": network.state_dict()}, folder / "model.pt")
    digest = exporter.export(folder / "model.pt", folder / "encoder.ts", size=32)
    return network, folder / "encoder.ts", digest


def test_the_export_gives_the_encoder_features_in_the_generator_layout(exporter, exported):
    network, path, digest = exported
    assert digest == exporter.sha256_of(path)
    files = {"provenance.json": ""}
    module = torch.jit.load(str(path), _extra_files=files)
    provenance = json.loads(files["provenance.json"])
    assert provenance["base_channels"] == 4 and provenance["trained_input_size"] == [32, 32]
    assert not any(name.startswith(("main_decoder", "aux_decoders")) for name, _ in module.named_parameters())
    x = torch.rand(2, 1, 32, 48)  # not square, not the traced size: the layout and the sizes must follow the input
    with torch.no_grad():
        features = module(x)
        expected = [f.transpose(-1, -2) for f in network.encode(x.transpose(-1, -2))]
    assert [tuple(f.shape) for f in features] == [(2, 4 * 2**i, 32 // 2**i, 48 // 2**i) for i in range(5)]
    for got, want in zip(features, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_the_generator_perceptual_loss_loads_and_uses_the_export(exported):
    _, path, _ = exported
    loss = import_bundle_scripts(LDM_BUNDLE).losses.FeaturePerceptualLoss(str(path), in_channels=1)
    x = torch.rand(2, 1, 32, 32)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    value = loss(y, x)
    value.backward()
    assert value.item() > 0 and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.network.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(y, x).dtype == torch.float32
