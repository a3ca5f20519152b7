"""The `mgcc` command line: every option stated once (argparse), checked before a command runs, and
`true`/`false` mean what they say."""

import inspect
import re
import shlex
import shutil
from pathlib import Path

import pytest

from mgcc import REPO_ROOT, cli


def _cli_error(argv: list[str], capsys) -> str:
    """Run `mgcc ...`, expect exit code 2 and a one-line error on stderr; return that line."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    captured = capsys.readouterr()
    assert stopped.value.code == 2, (stopped.value.code, captured.err)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_a_misspelled_option_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    for argv, wrong in (
        (["run", "--preset", "demo", "--dta", "x", "--out", str(out)], "--dta"),
        (["prepare", str(tmp_path), str(out), "--mask_patern", "*.png"], "--mask-patern"),
        (["compare", "--seed", "1"], "--seed"),
    ):  # not an abbreviation of --seeds
        line = _cli_error(argv, capsys)
        assert line.startswith(f"mgcc {argv[0]}: error: unrecognized arguments: {wrong}")
    assert not out.exists()
    line = _cli_error(["label", "serve", "--prot", "8000"], capsys)
    assert line.startswith("mgcc label serve: error: unrecognized arguments: --prot")


@pytest.mark.parametrize(
    ("words", "value"),
    [
        (["--include-normal", "false"], False),
        (["--include_normal=false"], False),
        (["--include-normal", "FALSE"], False),
        (["--no-include-normal"], False),
        (["--no_include_normal"], False),
        (["--include-normal"], True),
        (["--include-normal", "True"], True),
        (["--include-normal=yes"], True),
        ([], None),
    ],
)
def test_false_is_false(words, value):
    name, _, kwargs = cli.parse(["prepare", "a", "b", *words, "--layout", "false"])
    assert name == "prepare" and kwargs.get("include_normal") is value
    assert kwargs["layout"] == "false"  # only boolean options are converted
    assert (kwargs["source"], kwargs["out"]) == ("a", "b")


def test_a_flag_with_another_word_is_refused(capsys):
    line = _cli_error(["export", "run", "--out", "x", "--generator", "maybe"], capsys)
    assert line.startswith("mgcc export: error: argument --generator: expected true or false, got 'maybe'")


def test_include_normal_false_reaches_prepare_as_false(monkeypatch):
    seen = {}
    monkeypatch.setattr(
        "mgcc.data.prepare.prepare",
        lambda source, out, include_normal=False: seen.update(include_normal=include_normal),
    )
    cli.main(["prepare", "src", "out", "--include-normal", "false"])
    assert seen["include_normal"] is False


def test_each_spelling_of_an_option_gives_the_same_arguments():
    spellings = [
        ["export", "RUN", "--out", "X", "--generator", "false"],
        ["export", "--model", "RUN", "--out=X", "--no-generator"],
        ["export", "--out", "X", "--model=RUN", "--generator=false"],
        ["export", "--out", "X", "RUN", "--generator", "False"],
    ]
    assert all(cli.parse(argv)[2] == {"model": "RUN", "out": "X", "generator": False} for argv in spellings)
    _, _, kwargs = cli.parse(
        ["run", "--preset=busi-cpu", "--image_pattern", "case_{id}.png", "--mask-threshold", "200"]
    )
    assert kwargs == {"preset": "busi-cpu", "image_pattern": "case_{id}.png", "mask_threshold": 200}
    name, function, kwargs = cli.parse(["label", "studies", "--out", "s", "--n", "12"])
    assert name == "label studies" and function.__name__ == "studies" and kwargs == {"out": "s", "n": 12}


def test_a_required_value_is_asked_for_by_name(capsys):
    assert _cli_error(["export", "--out", "x"], capsys).startswith("mgcc export: error: MODEL (or --model) is required")
    line = _cli_error(["export", "RUN", "--model", "RUN2", "--out", "x"], capsys)
    assert "MODEL given twice" in line


def _parameters(function) -> set[str]:
    from mgcc.data.sources import DATA_OPTIONS

    names = set()
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            names |= set(DATA_OPTIONS)
        elif parameter.name != "self":
            names.add(parameter.name)
    return names


@pytest.mark.parametrize(
    "command", [*[c for c in cli.COMMANDS if c != "label"], *[f"label {a}" for a in cli.LABEL_COMMANDS]]
)
def test_the_options_of_each_command_are_the_parameters_of_its_function(command):
    """Every parameter of a command's function is an option, and every option a parameter."""
    cli.build_parser()
    options = {a.dest for a in cli.PARSERS[command]._actions if a.dest not in ("help",)}
    target = cli._load(cli.COMMANDS[command.split()[0]])
    function = getattr(target, command.split()[1]) if " " in command else target
    assert options == _parameters(function)


@pytest.mark.parametrize("command", [*cli.COMMANDS, "label serve"])
def test_every_command_prints_its_help_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command.split(), "--help"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert f"mgcc {command}" in printed and "usage:" in printed


def documented_mgcc_commands() -> list[tuple[str, str]]:
    """(file, command) for every `mgcc ...` line of a code block in the README and the guides."""
    found = []
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                for prefix in (".venv/bin/mgcc ", "mgcc "):
                    if line.startswith(prefix) and " [--" not in line:  # a synopsis: [--option value]
                        found.append((path.name, line[len(prefix) :]))
    return found


def test_every_documented_mgcc_command_parses(monkeypatch):
    commands = documented_mgcc_commands()
    assert len(commands) > 10 and {c.split()[0] for _, c in commands} >= {"run", "compare", "export", "label"}
    for where, command in commands:
        name, function, kwargs = cli.parse(shlex.split(command.replace("<", "").replace(">", "")))
        assert callable(function), (where, command)


def _run_without_model(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "prepare").mkdir(parents=True)
    (run / "prepare" / "stage.json").write_text('{"name": "prepare"}')
    return run


def test_export_of_a_run_without_a_trained_model_names_the_argument_and_says_why(tmp_path, capsys):
    run = _run_without_model(tmp_path)
    line = _cli_error(["export", str(run), "--out", str(tmp_path / "bundles")], capsys)
    assert line.startswith(f"mgcc export: error: MODEL {run}: ") and "--model" not in line
    assert "has no trained segmentation model yet" in line
    assert not (tmp_path / "bundles").exists()
    line = _cli_error(["evaluate", "--model", str(run), "--data", str(tmp_path)], capsys)
    assert line.startswith(f"mgcc evaluate: error: --model {run}: ") and "no trained segmentation model yet" in line


def test_a_run_with_several_trained_models_is_not_guessed_from(tmp_path, capsys):
    """After `mgcc compare` a run holds a model per variant: MODEL must name one; with one, the run is enough."""
    run = _run_without_model(tmp_path)
    for variant in ("supervised", "mgcc-synthetic"):
        stage = run / f"segmentation-{variant}"
        (stage / "models").mkdir(parents=True)
        (stage / "args.json").write_text("{}")
        (stage / "models" / "model.pt").write_bytes(b"")
    (run / "segmentation-mgcc-real.stale-1" / "models").mkdir(parents=True)  # an earlier run is not a candidate
    line = _cli_error(["export", str(run), "--out", str(tmp_path / "bundles")], capsys)
    assert line == (
        f"mgcc export: error: MODEL {run}: the run has 2 trained models (segmentation-mgcc-synthetic, "
        f"segmentation-supervised): name one, e.g. MODEL {run / 'segmentation-mgcc-synthetic'}"
    )
    from mgcc.trained import training_stage

    shutil.rmtree(run / "segmentation-supervised")
    assert training_stage(run) == run / "segmentation-mgcc-synthetic"


def test_an_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    line = _cli_error(["run", "--preset", "demo", "--out", str(a_file)], capsys)
    assert line == f"mgcc run: error: --out {a_file}: is a file, not a folder; nothing was written"
    stage = tmp_path / "segmentation"
    (stage / "models").mkdir(parents=True)
    (stage / "args.json").write_text("{}")
    (stage / "models" / "model.pt").write_bytes(b"")
    line = _cli_error(["export", str(stage), "--out", str(a_file)], capsys)
    assert line == f"mgcc export: error: --out {a_file}: is a file, not a folder; nothing was written"
    line = _cli_error(["export", str(stage), "--out", str(a_file / "below")], capsys)
    assert (
        line == f"mgcc export: error: --out {a_file / 'below'}: {a_file} is a file, not a folder; nothing was written"
    )
    assert a_file.read_text() == "mine"


def test_an_unknown_stage_or_variant_is_named_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    line = _cli_error(["run", "--preset", "demo", "--out", str(out), "--stage", "segmentaton"], capsys)
    assert line.startswith("mgcc run: error: --stage segmentaton: unknown stage; stages: prepare, autoencoder")
    line = _cli_error(
        ["compare", "--preset", "demo", "--out", str(out), "--variants", "supervised,mgcc-imaginary"], capsys
    )
    assert line.startswith("mgcc compare: error: --variants: unknown variant(s) ['mgcc-imaginary']")
    assert not out.exists()


def test_the_stage_and_variant_help_is_written_from_the_stage_graph_and_the_variants(monkeypatch):
    """`--stage` and `--variants` list what `mgcc.pipeline.STAGE_NAMES` and `mgcc.variants.VARIANTS` hold, so a
    stage or variant added there is offered by the command line too."""
    from mgcc import pipeline, variants

    monkeypatch.setattr(pipeline, "STAGE_NAMES", ("prepare", "new-stage", "report"))
    monkeypatch.setattr(variants, "VARIANTS", {"supervised": None, "new-variant": None})
    cli.build_parser()
    helps = {(name, a.dest): a.help for name, p in cli.PARSERS.items() for a in p._actions}
    assert helps[("run", "stage")] == "run only this stage, even if complete: prepare, new-stage or report"
    assert helps[("compare", "variants")].startswith("comma-separated subset of supervised, new-variant (default")
    assert cli.PARSERS["run"].description.startswith("prepare -> new-stage -> report, each under OUT/<stage>/")
