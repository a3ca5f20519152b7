"""The `mgcc` command line: options are checked before a command runs, and `true`/`false` mean what they say."""

import pytest

from mgcc import cli


def test_a_misspelled_option_is_refused_before_anything_runs(tmp_path, monkeypatch):
    out = tmp_path / "run"
    for argv, wrong in ((["run", "--preset", "demo", "--dta", "x", "--out", str(out)], "--dta"),
                        (["prepare", str(tmp_path), str(out), "--mask_patern", "*.png"], "--mask_patern")):
        with pytest.raises(SystemExit, match=f"unknown option '{wrong}'"):
            cli.main(argv)
    assert not out.exists()
    with pytest.raises(SystemExit, match="mgcc label serve: unknown option '--prot'"):
        cli.main(["label", "serve", "--prot", "8000"])


@pytest.mark.parametrize("words", [["--include-normal", "false"], ["--include_normal=false"], ["--include-normal", "FALSE"]])
def test_false_is_false(words):
    def prepare(source: str, out: str, include_normal: bool = False, layout: str = "auto"):
        return include_normal

    args = cli.checked_arguments(prepare, ["a", "b", *words, "--layout", "false"], "mgcc prepare")
    assert args[2:-2] in (["--include-normal", "False"], ["--include_normal=False"])
    assert args[-1] == "false"  # only boolean options are converted
    assert cli.checked_arguments(prepare, ["a", "b", "--include-normal", "true"], "mgcc prepare")[-1] == "True"
    assert cli.checked_arguments(prepare, ["a", "b", "--noinclude_normal"], "mgcc prepare")  # fire's negation


def test_include_normal_false_reaches_prepare_as_false(monkeypatch):
    seen = {}
    monkeypatch.setattr("mgcc.data.prepare.prepare", lambda source, out, include_normal=False: seen.update(
        include_normal=include_normal))
    cli.main(["prepare", "src", "out", "--include-normal", "false"])
    assert seen["include_normal"] is False


@pytest.mark.parametrize("command", [*cli.COMMANDS, "label serve"])
def test_every_command_prints_its_help_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command.split(), "--help"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert f"mgcc {command}" in printed and ("usage:" in printed or "NAME" in printed)


def _cli_error(argv: list[str], capsys) -> str:
    """Run `mgcc ...`, expect exit code 2 and a one-line error on stderr; return that line."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    captured = capsys.readouterr()
    assert stopped.value.code == 2, (stopped.value.code, captured.err)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_export_of_a_run_without_a_trained_model_names_the_argument_and_says_why(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "prepare").mkdir(parents=True)
    (run / "prepare" / "stage.json").write_text('{"name": "prepare"}')
    line = _cli_error(["export", str(run), "--out", str(tmp_path / "bundles")], capsys)
    assert line.startswith(f"mgcc export: error: MODEL {run}: ") and "--model" not in line
    assert "has no trained segmentation model yet" in line
    assert not (tmp_path / "bundles").exists()
    line = _cli_error(["evaluate", "--model", str(run), "--data", str(tmp_path)], capsys)
    assert line.startswith(f"mgcc evaluate: error: --model {run}: ") and "no trained segmentation model yet" in line


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
    assert line == f"mgcc export: error: --out {a_file / 'below'}: {a_file} is a file, not a folder; nothing was written"
    assert a_file.read_text() == "mine"
