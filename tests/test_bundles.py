"""`mgcc.bundles`: each bundle's `scripts` package, imported without touching `sys.path`, and importable as
`scripts` (what its configs import) only within a block, so the two bundles' configs run one after the other in one
process."""

import importlib
import sys

from mgcc import LDM_BUNDLE, SEG_BUNDLE
from mgcc.bundles import import_bundle_scripts, importable_as_scripts


def test_a_bundle_config_imports_that_bundles_scripts_only_within_the_block():
    path = list(sys.path)
    seg = import_bundle_scripts(SEG_BUNDLE)
    assert import_bundle_scripts(SEG_BUNDLE) is seg  # imported once
    before = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "scripts"}
    with importable_as_scripts(SEG_BUNDLE) as package:
        assert package is seg and importlib.import_module("scripts") is seg
        assert importlib.import_module("scripts.network") is seg.network  # the same modules, not a second copy
        from monai.bundle import ConfigParser

        parser = ConfigParser({"net": {"_target_": "scripts.network.MGCCNet", "base_channels": 4}})
        assert isinstance(parser.get_parsed_content("net"), seg.network.MGCCNet)
    after = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "scripts"}
    assert after == before and sys.path == path
    with importable_as_scripts(LDM_BUNDLE) as ldm:  # then the other bundle's
        assert importlib.import_module("scripts") is ldm is not seg and hasattr(ldm, "sampler")
    assert sys.path == path
