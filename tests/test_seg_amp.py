"""Mixed precision of the segmentation bundle on CPU: ``AutocastInferer`` (bfloat16) in training and inference."""

from pathlib import Path

import pytest
import torch
from monai.losses import DiceCELoss

from mgcc.bundles import import_bundle_scripts

scripts = import_bundle_scripts(Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation")
AutocastInferer, MGCCNet = scripts.inferer.AutocastInferer, scripts.network.MGCCNet


def conv_output_dtypes(net: torch.nn.Module, inferer, image: torch.Tensor) -> tuple[set, list]:
    seen = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    outputs = inferer(image, net)
    for h in hooks:
        h.remove()
    return seen, list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


@pytest.mark.parametrize("enabled, expected", [(True, torch.bfloat16), ("false", torch.float32), (False, torch.float32)])
def test_convolutions_run_in_bfloat16_on_cpu_and_outputs_are_float32(enabled, expected):
    torch.manual_seed(0)
    net = MGCCNet(base_channels=4).train()
    image, label = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.7).float()
    inferer = AutocastInferer(enabled=enabled, device="cpu")
    dtypes, outputs = conv_output_dtypes(net, inferer, image)
    assert dtypes == {expected}
    assert len(outputs) == 4 and all(o.dtype == torch.float32 for o in outputs)
    loss = torch.stack([DiceCELoss(sigmoid=True)(o, label) for o in outputs]).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert not inferer.needs_grad_scaler  # bfloat16 trains without gradient scaling


def test_bfloat16_inference_is_close_to_float32_and_channels_last_changes_nothing():
    torch.manual_seed(0)
    net = MGCCNet(base_channels=4).eval()
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        reference = AutocastInferer(enabled=False)(image, net)
        bf16 = AutocastInferer(enabled=True)(image, net)
        nhwc = AutocastInferer(enabled=False, channels_last=True)(image, net.to(memory_format=torch.channels_last))
    assert torch.allclose(torch.sigmoid(bf16), torch.sigmoid(reference), atol=0.05)
    assert torch.allclose(nhwc, reference, atol=1e-5)


def test_defaults_and_bad_flags():
    assert AutocastInferer(enabled=True, device="cuda").needs_grad_scaler  # float16 on CUDA
    assert AutocastInferer(enabled=True, device="cpu").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="config key 'amp' must be true or false, got 'yes please'"):
        AutocastInferer(enabled="yes please")
