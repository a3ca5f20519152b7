"""Import a bundle's own `scripts` package without clashing with the other bundle's (both are named `scripts`).

`import_bundle_scripts(bundle)` gives the package, imported once under a private name; code that only calls into
it needs nothing more. A bundle *config* run in this process (`ConfigWorkflow`, `ConfigParser`) imports it by its
real name (`$import scripts`, `"_target_": "scripts.network.MGCCNet"`): `importable_as_scripts(bundle)` makes the
same modules importable as `scripts` for the duration of a `with` block. Neither touches `sys.path`.
`workflow_precision` asks the segmentation bundle's own `AutocastInferer` what a workflow's forward passes run in.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

#: where the segmentation bundle's configs build the `AutocastInferer` that runs every forward pass: training's
#: (evaluate.json evaluates with it), else inference's; the generator's configs have none
AUTOCAST_INFERERS = ("train#inferer", "inferer")
AUTOCAST_TARGET = "scripts.inferer.AutocastInferer"


def import_bundle_scripts(bundle: Path) -> ModuleType:
    """The `scripts` package of `bundle`, imported once under the private name `<bundle folder>_scripts`."""
    name = f"{Path(bundle).name}_scripts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(bundle) / "scripts" / "__init__.py", submodule_search_locations=[str(Path(bundle) / "scripts")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def _scripts_modules() -> dict[str, ModuleType]:
    return {name: module for name, module in sys.modules.items() if name == "scripts" or name.startswith("scripts.")}


@contextlib.contextmanager
def importable_as_scripts(bundle: Path) -> Iterator[ModuleType]:
    """Within the block, `import scripts` (and `scripts.<module>`) gives `bundle`'s package, as when
    `python -m monai.bundle run` runs from the bundle folder; afterwards `scripts` is what it was before, so the
    other bundle's configs can run next in the same process. Yields the package."""
    package = import_bundle_scripts(bundle)
    prefix = package.__name__
    aliases = {
        "scripts" + name[len(prefix) :]: module
        for name, module in list(sys.modules.items())
        if name == prefix or name.startswith(prefix + ".")
    }
    before = _scripts_modules()
    for name in before:
        del sys.modules[name]
    sys.modules.update(aliases)
    try:
        yield package
    finally:
        for name in _scripts_modules():
            del sys.modules[name]
        sys.modules.update(before)


def workflow_precision(bundle: Path, config_files: Sequence[str], overrides: dict[str, Any]) -> str | None:
    """What the forward passes of a bundle workflow run in on this machine (`"float32"`, `"bfloat16 autocast,
    channels-last"`, ...): the `precision` of the `AutocastInferer` its config files and `overrides` build, built here
    by the bundle's own code as `monai.bundle run` builds it (from `amp`, `channels_last` and `device`); None for a
    workflow without one. A bad `amp` raises the bundle's own `ValueError`."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(bundle) / "configs" / c) for c in config_files])
    parser.update(overrides)
    found = [
        i
        for i in AUTOCAST_INFERERS
        if i in parser and isinstance(parser[i], dict) and parser[i].get("_target_") == AUTOCAST_TARGET
    ]
    if not found:
        return None
    with importable_as_scripts(bundle), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what it warns of (amp on a slow CPU), the workflow's own log says
        try:
            return parser.get_parsed_content(found[0]).precision
        except RuntimeError as err:  # MONAI's "failed to instantiate": what the bundle's code raised is its cause
            raise (err.__cause__ or err) from None
