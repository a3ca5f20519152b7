"""Reflect padding of the diffusion UNet: the weights stay, only the border handling changes."""

import pytest
import torch

from mgcc import LDM_BUNDLE
from mgcc.bundles import import_bundle_scripts


def test_padding_mode_changes_only_the_border():
    scripts = import_bundle_scripts(LDM_BUNDLE)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 1))
    x = torch.rand(1, 1, 16, 16)
    zeros = net(x)
    reflected = scripts.utils.set_padding_mode(net, "reflect")(x)
    assert net[0].padding_mode == "reflect" and net[1].padding_mode == "zeros"  # unpadded convs untouched
    assert torch.allclose(zeros[..., 1:-1, 1:-1], reflected[..., 1:-1, 1:-1])
    assert not torch.allclose(zeros[..., 0, :], reflected[..., 0, :])
    with pytest.raises(ValueError, match="padding mode must be"):
        scripts.utils.set_padding_mode(net, "mirror")
