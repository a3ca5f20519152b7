"""Import a bundle's own `scripts` package without clashing with the other bundle's (both are named `scripts`).

`import_bundle_scripts(bundle)` gives the package, imported once under a private name; code that only calls into
it needs nothing more. A bundle *config* run in this process (`ConfigWorkflow`, `ConfigParser`) imports it by its
real name (`$import scripts`, `"_target_": "scripts.network.MGCCNet"`): `importable_as_scripts(bundle)` makes the
same modules importable as `scripts` for the duration of a `with` block. Neither touches `sys.path`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


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
