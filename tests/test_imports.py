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
    guides = [
        REPO_ROOT / "README.md",
        *(REPO_ROOT / "docs").glob("*.md"),
        *(REPO_ROOT / "docs" / "experiments").glob("*.md"),
    ]
    named = {
        (guide.name, path)
        for guide in guides
        for path in re.findall(r"(?<![\w/.$])((?:scripts|src|apps|tests|docs)/[\w/.-]+\.py)\b", guide.read_text())
    }
    roots = [REPO_ROOT, *(REPO_ROOT / "bundles").iterdir()]  # a bundle's `scripts/...` is relative to the bundle
    assert (
        named
        and [(guide, path) for guide, path in sorted(named) if not any((root / path).is_file() for root in roots)] == []
    )


def import_graph() -> dict[str, set[str]]:
    """module -> the `mgcc` modules it imports, at module level or inside a function (from the source, by `ast`)."""
    import ast

    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ("mgcc", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets |= {
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                }
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (`[a, b, ..., a]`), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_finds_imports_of_every_kind_and_a_cycle():
    graph = import_graph()
    assert {"mgcc.pipeline", "mgcc.stages", "mgcc.presets"} <= graph["mgcc.compare"]
    assert "mgcc.report" in graph["mgcc.pipeline"]  # a function-level import (`_report`)
    assert "mgcc.data.sources" in graph["mgcc.pipeline"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_module_of_mgcc_imports_itself_through_others():
    """No import circles in src/mgcc, also through imports inside functions: each module can be read after the
    modules it imports."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
