"""Import a bundle's own `scripts` package without clashing with the other bundle's (both are named `scripts`)."""

from __future__ import annotations

import importlib.util
import sys
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
        spec.loader.exec_module(module)
    return sys.modules[name]
