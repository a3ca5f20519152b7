"""The auxiliary decoders' disagreement as an uncertainty score (`scripts/score.py`, `configs/score.json`)."""

import pytest
import torch
from test_seg_network import MGCCNet, one_thread  # noqa: F401 (autouse: one torch thread)

from mgcc import SEG_BUNDLE
from mgcc.bundles import import_bundle_scripts

score = import_bundle_scripts(SEG_BUNDLE).score


def logits(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.clamp(1e-6, 1 - 1e-6))


def test_agreeing_decoders_score_zero_and_the_region_is_where_any_decoder_sees_a_lesion():
    main = torch.full((1, 1, 4, 4), 0.1)
    main[..., :2, :2] = 0.9  # a lesion of 4 pixels, seen by the main decoder
    same = (logits(main),) * 4
    scores, maps = score.disagreement(same)
    assert scores.tolist() == [0.0] and maps.abs().max() < 1e-6

    aux = main.clone()
    aux[..., 0, 0] = 0.1  # one auxiliary decoder misses one lesion pixel: d = (0.8^2) / 3 there
    scores, _ = score.disagreement((logits(main), logits(aux), logits(main), logits(main)))
    assert scores.item() == pytest.approx(0.8**2 / 3 / 4, rel=1e-4)  # averaged over the 4 lesion pixels only

    nothing = torch.full((1, 1, 4, 4), 0.2)
    other = torch.full((1, 1, 4, 4), 0.4)  # no decoder sees a lesion: the mean over the whole image
    scores, _ = score.disagreement((logits(nothing), logits(other), logits(nothing), logits(nothing)))
    assert scores.item() == pytest.approx(0.2**2 / 3, rel=1e-4)


def test_the_inferer_returns_the_main_prediction_and_scores_do_not_depend_on_the_order():
    torch.manual_seed(0)
    net = MGCCNet(base_channels=4).eval()
    images = torch.rand(3, 1, 32, 32)
    inferer = score.DisagreementInferer(seed=0)
    with torch.no_grad():
        main = inferer(images, net)
        assert torch.allclose(main, net(images), atol=1e-6)  # the masks are the plain inference's (image by image)
        first = list(inferer.last_scores)
        inferer(images.flip(0), net)
    assert inferer.last_scores == first[::-1] and all(s > 0 for s in first)  # perturbations on, seeded by content
    with torch.no_grad():
        other_seed = score.DisagreementInferer(seed=1)
        other_seed(images, net)
    assert other_seed.last_scores != first
