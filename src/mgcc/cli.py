"""`mgcc` command line (python-fire). Each sub-command lives in the module that owns its job."""

import importlib
import inspect

import fire

# sub-command -> "module:attribute"; imported on use so `mgcc phantom` does not pay for torch.
COMMANDS = {
    "phantom": "mgcc.data.phantom:phantom",
    "prepare": "mgcc.data.prepare:prepare",
    "run": "mgcc.pipeline:run",
    "compare": "mgcc.compare:compare",
    "evaluate": "mgcc.external:evaluate",
    "export": "mgcc.export:export",
    "label": "mgcc.monailabel.launcher:Label",
}
BOOLEAN_WORDS = {"true": "True", "false": "False"}


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def checked_arguments(function, args: list[str], name: str) -> list[str]:
    """The arguments for fire, after two checks fire does not make before it runs the command.

    A misspelled option (``--dta``) is refused with a one-line error: fire would run the command with the
    defaults first and complain after. ``--flag true`` / ``--flag false`` for a boolean option become Python's
    ``True`` / ``False``: fire passes the word as a string, and the string ``'false'`` is true."""
    parameters = dict(inspect.signature(function).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):  # `**data_options`
        from mgcc.data.sources import DATA_OPTIONS

        parameters = {n: p for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        parameters |= {option: inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=None)
                       for option in DATA_OPTIONS}
    booleans = {n for n, p in parameters.items() if isinstance(p.default, bool) or p.annotation in (bool, "bool")}
    checked = []
    for i, arg in enumerate(args):
        previous = args[i - 1] if i else ""
        if arg == "--" or arg in ("-h", "--help"):
            return checked + args[i:]  # fire's own flags follow
        if arg.startswith("--"):
            option, _, value = arg[2:].partition("=")
            option = option.replace("-", "_")
            if option not in parameters and not (option.startswith("no") and option[2:] in booleans):
                raise SystemExit(f"{name}: unknown option '--{arg[2:].partition('=')[0]}' "
                                 f"(options: {', '.join('--' + p for p in parameters)})")
            if value.lower() in BOOLEAN_WORDS and option in booleans:
                arg = f"--{option}={BOOLEAN_WORDS[value.lower()]}"
        elif arg.lower() in BOOLEAN_WORDS and previous.startswith("--") and "=" not in previous:
            if previous[2:].replace("-", "_") in booleans:
                arg = BOOLEAN_WORDS[arg.lower()]
        checked.append(arg)
    return checked


def usage(function, name: str) -> str:
    """`name`'s usage: its options (with defaults) and its docstring."""
    options = []
    for parameter in list(inspect.signature(function).parameters.values()):
        if parameter.name == "self":
            continue
        flag = "--" + parameter.name.replace("_", "-")
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            from mgcc.data.sources import DATA_OPTIONS

            options += [f"[--{option.replace('_', '-')} VALUE]" for option in DATA_OPTIONS]
        elif parameter.default is inspect.Parameter.empty:
            options.append(parameter.name.upper() if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else flag)
        else:
            options.append(f"[{flag} {parameter.default!r}]")
    return f"usage: {name} {' '.join(options)}\n\n{inspect.cleandoc(function.__doc__ or '')}"


def main(argv: list[str] | None = None) -> None:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print("usage: mgcc {" + ",".join(COMMANDS) + "} [--help]")
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    target, name, rest = _load(COMMANDS[args[0]]), f"mgcc {args[0]}", args[1:]
    if "-h" in rest or "--help" in rest:
        method = getattr(target, rest[0], None) if inspect.isclass(target) and rest[0] not in ("-h", "--help") else None
        if callable(method):
            print(usage(method, f"{name} {rest[0]}"))
        elif inspect.isclass(target):
            subcommands = [n for n, f in inspect.getmembers(target, inspect.isfunction) if not n.startswith("_")]
            print(f"usage: {name} {{{','.join(subcommands)}}} [--help]\n\n{inspect.cleandoc(target.__doc__ or '')}")
        else:
            print(usage(target, name))
        raise SystemExit(0)
    if inspect.isclass(target):  # a group of sub-commands (`mgcc label serve ...`): check the method's options
        method = getattr(target, rest[0], None) if rest and not rest[0].startswith("-") else None
        if callable(method):
            rest = rest[:1] + checked_arguments(method, rest[1:], f"{name} {rest[0]}")
    else:
        rest = checked_arguments(target, rest, name)
    from mgcc.data.records import DatasetError
    from mgcc.errors import MgccError

    try:
        fire.Fire(target, command=rest, name=name)
    except (MgccError, DatasetError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
