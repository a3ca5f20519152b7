"""The package's layout: every `mgcc` module is the file its import name says."""

from pathlib import Path

from mgcc import PACKAGE_DIR


def test_the_monailabel_launcher_is_where_its_import_name_says():
    """`mgcc.monailabel.launcher` is `src/mgcc/monailabel/launcher.py`; the MONAI Label app and its environment's
    set-up, which run in the MONAI Label environment, stay in `apps/monailabel/` and are found from there."""
    from mgcc.monailabel import launcher

    assert Path(launcher.__file__).resolve() == PACKAGE_DIR / "monailabel" / "launcher.py"
    assert launcher.CLIENT == PACKAGE_DIR / "monailabel" / "client.py"
    for path in (launcher.APP_MAIN, launcher.SETUP_SCRIPT, launcher.CLIENT):
        assert path.is_file(), path
