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
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        for m in net.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    outputs = inferer(image, net)
    for h in hooks:
        h.remove()
    return seen, list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


@pytest.mark.parametrize(
    "enabled, expected", [(True, torch.bfloat16), ("false", torch.float32), (False, torch.float32)]
)
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
    with pytest.raises(ValueError, match="config key 'amp' must be true, false or auto, got 'yes please'"):
        AutocastInferer(enabled="yes please")


@pytest.fixture
def cpu_bfloat16(monkeypatch):
    """Set whether the CPU has bfloat16 in hardware, as the capability check would find it."""

    def set_capability(native: bool) -> None:
        monkeypatch.setattr(scripts.inferer, "cpu_has_native_bfloat16", lambda: native)

    return set_capability


@pytest.mark.parametrize(
    "native, expected, memory_format",
    [(True, torch.bfloat16, torch.channels_last), (False, torch.float32, torch.contiguous_format)],
)
def test_auto_is_bfloat16_only_where_the_cpu_has_it(cpu_bfloat16, native, expected, memory_format):
    cpu_bfloat16(native)
    inferer = AutocastInferer(device="cpu")  # the configs' default: amp "auto", channels_last "auto"
    assert (inferer.enabled, inferer.dtype, inferer.memory_format) == (native, expected, memory_format)
    assert inferer.precision == ("bfloat16 autocast, channels-last" if native else "float32")
    dtypes, _ = conv_output_dtypes(
        MGCCNet(base_channels=4).to(memory_format=memory_format), inferer, torch.rand(1, 1, 32, 32)
    )
    assert dtypes == {expected}


@pytest.mark.parametrize("amp", [False, "false", "False"])
def test_explicit_false_forces_float32_even_where_bfloat16_is_fast(cpu_bfloat16, amp):
    cpu_bfloat16(True)
    inferer = AutocastInferer(enabled=amp, device="cpu", channels_last="auto")
    assert (inferer.enabled, inferer.dtype, inferer.memory_format) == (False, torch.float32, torch.contiguous_format)


@pytest.mark.parametrize(
    "onednn, flags, expected",
    [
        (False, {"avx2", "avx512_bf16"}, False),  # oneDNN cannot: never
        (True, {"avx2", "avx512f", "avx512bw"}, False),  # plain AVX-512: oneDNN emulates bfloat16, slower than float32
        (True, {"avx2", "avx512f", "avx512_bf16"}, True),
        (True, {"avx2", "amx_bf16"}, True),
        (True, None, True),  # no /proc/cpuinfo: oneDNN's word
    ],
)
def test_capability_check(monkeypatch, onednn, flags, expected):
    monkeypatch.delenv(scripts.inferer.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(scripts.inferer, "_cpu_flags", lambda: flags)
    scripts.inferer.cpu_has_native_bfloat16.cache_clear()
    try:
        assert scripts.inferer.cpu_has_native_bfloat16() is expected
    finally:
        scripts.inferer.cpu_has_native_bfloat16.cache_clear()


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False)])
@pytest.mark.parametrize("onednn, flags", [(False, {"avx2"}), (True, {"avx2", "avx512_bf16"})])
def test_the_environment_switch_overrides_the_capability_check(monkeypatch, onednn, flags, value, expected):
    """``MGCC_CPU_BFLOAT16`` makes ``auto`` act as on the other kind of CPU, whatever this one has."""
    monkeypatch.setenv(scripts.inferer.CPU_BF16_ENV, value)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(scripts.inferer, "_cpu_flags", lambda: flags)
    scripts.inferer.cpu_has_native_bfloat16.cache_clear()
    try:
        assert scripts.inferer.cpu_has_native_bfloat16() is expected
        assert AutocastInferer(device="cpu").dtype == (torch.bfloat16 if expected else torch.float32)
        monkeypatch.setenv(scripts.inferer.CPU_BF16_ENV, "yes")
        scripts.inferer.cpu_has_native_bfloat16.cache_clear()
        with pytest.raises(ValueError, match="environment variable MGCC_CPU_BFLOAT16 must be 1 or 0, got 'yes'"):
            scripts.inferer.cpu_has_native_bfloat16()
    finally:
        scripts.inferer.cpu_has_native_bfloat16.cache_clear()


def test_training_chooses_its_precision_and_masks_are_float32_on_every_machine():
    """Training and validation run ``auto``; inference and evaluation run float32, so ``inference.json``, its
    ONNX and TorchScript exports, the Deploy app and MONAI Label give one mask for an image on every CPU."""
    import json

    configs = Path(scripts.__file__).parents[1] / "configs"
    train = json.loads((configs / "train.json").read_text())
    assert (train["amp"], train["channels_last"]) == ("auto", "auto")
    inference = json.loads((configs / "inference.json").read_text())
    assert (inference["amp"], inference["channels_last"]) == (False, "auto")
    assert json.loads((configs / "evaluate.json").read_text())["amp"] is False
