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
