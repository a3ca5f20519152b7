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


def test_code_lives_under_src_and_scripts_and_every_path_the_guides_name_exists():
    """Results folders hold results only (an experiment's script is in `scripts/experiments/`), and every `.py`
    path a guide or the README names is there."""
    import re

    from mgcc import REPO_ROOT

    assert sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").rglob("*.py")) == []
    guides = [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md"), *(REPO_ROOT / "docs" / "experiments").glob("*.md")]
    named = {(guide.name, path) for guide in guides
             for path in re.findall(r"(?<![\w/.$])((?:scripts|src|apps|tests|docs)/[\w/.-]+\.py)\b", guide.read_text())}
    roots = [REPO_ROOT, *(REPO_ROOT / "bundles").iterdir()]  # a bundle's `scripts/...` is relative to the bundle
    assert named and [(guide, path) for guide, path in sorted(named)
                      if not any((root / path).is_file() for root in roots)] == []
