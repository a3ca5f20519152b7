"""`mgcc` command line (python-fire). Each sub-command lives in the module that owns its job."""

import importlib

import fire

# sub-command -> "module:attribute"; imported on use so `mgcc phantom` does not pay for torch.
COMMANDS = {
    "phantom": "mgcc.data.phantom:phantom",
    "prepare": "mgcc.data.prepare:prepare",
    "run": "mgcc.pipeline:run",
    "compare": "mgcc.compare:compare",
    "label": "mgcc.label:Label",
}


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> None:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print("usage: mgcc {" + ",".join(COMMANDS) + "} [--help]")
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    fire.Fire(_load(COMMANDS[args[0]]), command=args[1:], name=f"mgcc {args[0]}")


if __name__ == "__main__":
    main()
