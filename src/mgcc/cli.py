"""The `mgcc` command line (argparse from the standard library).

Each sub-command is one function in the module that owns its job (`COMMANDS`); this file states every option of
every command once, with its help. A command's module is imported only when it runs, so `mgcc phantom` or
`mgcc run --help` does not pay for torch. Options are given as `--opt value` or `--opt=value`, spelled `--opt-name`
or `--opt_name`; an option that is not given is not passed, so the function's own default applies. A boolean
option takes `--flag`, `--no-flag` or `--flag true|false`. Errors of the library (`mgcc.errors.MgccError`, the data
package's `DatasetError`) become one line `mgcc <command>: error: <message>` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Callable
from typing import Any

#: sub-command -> "module:function" (for `label`, a class whose methods are its sub-commands)
COMMANDS = {
    "phantom": "mgcc.data.phantom:phantom",
    "prepare": "mgcc.data.prepare:prepare",
    "run": "mgcc.pipeline:run",
    "compare": "mgcc.compare:compare",
    "evaluate": "mgcc.external:evaluate",
    "export": "mgcc.export:export",
    "label": "mgcc.monailabel.launcher:Label",
}
LABEL_COMMANDS = ("setup", "studies", "app", "serve")

#: help of `mgcc prepare`'s options for a generic-layout dataset (names: `mgcc.data.sources.DATA_OPTIONS`)
DATA_OPTION_HELP = {
    "layout": "auto (default: BUSI class folders, or an images and a masks folder), busi or folders",
    "images": "generic layout: the images folder, relative to the dataset (default images)",
    "masks": "generic layout: the masks folder, relative to the dataset (default masks)",
    "image_pattern": "generic layout: image file names with one {id}, e.g. 'case_{id}.png' (default {id}.png)",
    "mask_pattern": "generic layout: mask file names with one {id}, e.g. 'mask_{id}.png' (default {id}.png)",
    "classes": "CSV with each image's class (read from the current folder)",
    "id_column": "the CSV's column of image ids (default: image)",
    "class_column": "the CSV's column of classes (default: class)",
    "group_column": "a CSV column (e.g. the patient): images with one value stay on one side of every split",
    "mask_threshold": "masks with more than one non-zero value are lesion where >= T (0..255); "
    "default: half their maximum",
}
#: what `evaluate` and `export` take as MODEL
MODEL_HELP = (
    "a training stage folder (<run>/segmentation-mgcc-synthetic), its models/model.pt, or a run folder with "
    "one trained model"
)
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")


def boolean(text: str) -> bool:
    """`--flag true` / `--flag false` (any case; also yes/no, 1/0)."""
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def number_or_text(text: str) -> int | float | str:
    """A number when the text is one (`200` -> 200, `0.5` -> 0.5), else the text, which the data package checks
    and refuses by name (as the earlier command line passed it: runs record the value in their fingerprints)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, `<prog>: error: <message>`, with exit status 2."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, argument_default=argparse.SUPPRESS, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class Once(argparse.Action):
    """A value that may be given as a positional argument or as an option, once."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values is None:  # the positional form, not given
            return
        if hasattr(namespace, self.dest):
            parser.error(f"{self.dest.upper()} given twice (as {self.dest.upper()} or --{self.dest.replace('_', '-')})")
        setattr(namespace, self.dest, values)


def required(parser: argparse.ArgumentParser, name: str, help: str, **kwargs: Any) -> None:
    """A required value, given as the next positional argument (`mgcc export RUN`) or as `--name RUN`."""
    parser.add_argument(name, nargs="?", metavar=name.upper(), action=Once, help=help, **kwargs)
    option(parser, name, help=f"the same as {name.upper()}", action=Once, **kwargs)
    parser.set_defaults(_required=[*(parser.get_default("_required") or []), name])


def option(parser: argparse.ArgumentParser, name: str, help: str, **kwargs: Any) -> None:
    """`--name` (both `--some-name` and `--some_name` are accepted, see `normalized`)."""
    parser.add_argument("--" + name.replace("_", "-"), dest=name, help=help, **kwargs)


def flag(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """A boolean: `--name`, `--name true|false` or `--no-name`."""
    dashed = name.replace("_", "-")
    parser.add_argument(f"--{dashed}", dest=name, nargs="?", const=True, type=boolean, metavar="true|false", help=help)
    parser.add_argument(f"--no-{dashed}", dest=name, action="store_false", help=f"the same as --{dashed} false")


def data_options(parser: argparse.ArgumentParser) -> None:
    """`mgcc prepare`'s options for a generic-layout dataset."""
    from mgcc.data.sources import DATA_OPTIONS

    for name in DATA_OPTIONS:
        option(
            parser,
            name,
            DATA_OPTION_HELP.get(name, "see `mgcc prepare --help`"),
            **({"type": number_or_text} if name == "mask_threshold" else {}),
        )


#: "run", "label serve", ...: the parser of each command (filled by `build_parser`)
PARSERS: dict[str, argparse.ArgumentParser] = {}


def command(subparsers: Any, name: str, help: str, description: str = "", parent: str = "") -> argparse.ArgumentParser:
    """The parser of `mgcc [parent] name`."""
    full = f"{parent} {name}".strip()
    PARSERS[full] = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        prog=f"mgcc {full}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return PARSERS[full]


def build_parser() -> argparse.ArgumentParser:
    from mgcc.pipeline import STAGE_NAMES  # the stage graph and the variants (no torch: cheap to import)
    from mgcc.variants import VARIANTS

    parser = Parser(
        prog="mgcc",
        description="MGCC: semi-supervised ultrasound segmentation with diffusion-generated "
        "unlabeled images, as MONAI bundles.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = command(commands, "phantom", "write a phantom BUSI-layout dataset (synthetic ultrasound-like images)")
    required(p, "out", "the dataset folder to write")
    option(p, "n", "number of images (default 64)", type=int)
    option(p, "size", "image size in pixels (default 128)", type=int)
    option(p, "seed", "random seed (default 0)", type=int)

    p = command(
        commands,
        "prepare",
        "check, normalize and split a dataset; write its datalist",
        "Check, normalize and split a dataset (BUSI layout or a generic one) into train / validation / test,\n"
        "and write `manifest.json` and `datalist.json`; exit 2 on invalid data, nothing written.",
    )
    required(p, "source", "the raw dataset folder")
    required(p, "out", "the prepared dataset folder to write")
    option(p, "labeled_fraction", "labeled share of the train split: 0.125 (default) or 1/8, in (0, 1]")
    option(p, "seed", "split seed, a whole number (default 0)")
    flag(p, "include_normal", "keep images of class `normal` (BUSI's lesion-free images)")
    data_options(p)
    option(
        p,
        "near_copy_correlation",
        "images whose 32x32 thumbnails correlate at least C stay on one side of "
        "every split (default 0.92; 1: only pixel-identical images)",
    )

    p = command(
        commands,
        "run",
        "run the MGCC pipeline (every stage resumes)",
        textwrap.fill(
            " -> ".join(STAGE_NAMES) + ", each under OUT/<stage>/; a complete stage whose settings are unchanged is "
            "skipped.",
            width=102,
            break_on_hyphens=False,
        ),
    )
    option(p, "preset", "preset name in configs/ (demo, busi-cpu, busi-gpu, ...) or a preset JSON file (default demo)")
    option(
        p,
        "data",
        "the dataset: a BUSI-layout folder, a generic-layout folder (with the data options below) or a "
        "folder prepared by `mgcc prepare`; default: the preset's phantom data",
    )
    option(p, "out", "output folder (default outputs/<preset>)")
    option(p, "stage", f"run only this stage, even if complete: {', '.join(STAGE_NAMES[:-1])} or {STAGE_NAMES[-1]}")
    data_options(p)

    p = command(
        commands,
        "compare",
        "train and evaluate each variant (supervised, MGCC with real / synthetic / "
        "both unlabeled images) for each seed, then tabulate",
    )
    option(p, "preset", "preset name or file (default busi-cpu)")
    option(p, "data", "the dataset in any form `mgcc run` takes; default: the preset's phantom data")
    option(p, "out", "output folder (default outputs/<preset>)")
    option(
        p,
        "variants",
        f"comma-separated subset of {', '.join(VARIANTS)} (default: all); the first is the baseline of the paired "
        "differences",
    )
    option(p, "seeds", "comma-separated seeds, e.g. 0,1,2 (default: the preset's seed)")
    option(
        p,
        "jobs",
        "chains of stages run at once, each a process with its share of the CPU threads (per seed: the generator and "
        "the variants that read its samples, and each other variant); logs in OUT/compare/jobs/ (default 1: one "
        "stage after another)",
        type=int,
    )
    data_options(p)

    p = command(commands, "evaluate", "score a trained model on another dataset (an external test)")
    required(p, "model", MODEL_HELP)
    required(p, "data", "the dataset: BUSI layout, generic layout (with the data options) or a prepared folder")
    option(p, "section", "test (the dataset's test split, split with --seed; default) or all (every image)")
    option(p, "out", "output folder (default <run>/external/<dataset name>-<section>)")
    option(p, "seed", "the dataset's split seed, for --section test (default 0)", type=int)
    flag(p, "include_normal", "keep images of class `normal`")
    option(p, "only_class", "comma-separated classes to score (e.g. normal); default: every class")
    data_options(p)

    p = command(commands, "export", "write ready MONAI bundles of a trained run (no overrides needed)")
    required(p, "model", MODEL_HELP)
    option(p, "out", "output folder; gets ultrasound_mgcc_segmentation/ (and ultrasound_ldm_generation/)")
    flag(p, "generator", "also export the run's generator, when the run trained one (default true)")

    label = command(commands, "label", "MONAI Label for the MGCC bundle (for 3D Slicer users)")
    actions = label.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    command(
        actions,
        "setup",
        "create (or check) the MONAI Label virtual environment (.venv-label); idempotent",
        parent="label",
    )
    p = command(
        actions,
        "studies",
        "write a phantom studies folder (datastore) with some images already labeled",
        parent="label",
    )
    required(p, "out", "the studies folder to write")
    option(p, "n", "number of images (default 24)", type=int)
    option(p, "size", "image size in pixels (default 128)", type=int)
    option(p, "seed", "random seed (default 0)", type=int)
    option(p, "labeled", "how many images come labeled (default 8)", type=int)
    for name, text in (
        ("app", "build the MONAI Label app folder (the sample monaibundle app + a copy of the bundle)"),
        ("serve", "start `monailabel start_server` with the app and the bundle (Ctrl-C stops)"),
    ):
        p = command(actions, name, text, parent="label")
        if name == "serve":
            required(p, "studies", "the datastore folder (PNG images; labels go to <studies>/labels/final)")
        else:
            option(p, "studies", "the datastore folder whose images become MGCC's unlabeled set")
        option(
            p,
            "bundle",
            "bundle folder (default bundles/ultrasound_mgcc_segmentation); it is copied into "
            "<workdir>/app/model/<name>/, where retrained weights are written",
        )
        if name == "serve":
            option(p, "port", "port (default 8000)", type=int)
            option(p, "host", "host (default 127.0.0.1; MONAI Label has no authentication here)")
        option(p, "workdir", "working folder of the app (default outputs/monailabel)")
        option(
            p,
            "overrides",
            "JSON object of bundle config ids -> values written into the copy, e.g. "
            '\'{"base_channels": 16, "spatial_size": [128, 128]}\' (must match the checkpoint)',
        )
        flag(p, "fresh_model", "start from untrained weights instead of the bundle's models/model.pt")
        if name == "serve":
            flag(p, "setup", "create the MONAI Label environment first when missing (default true)")
    return parser


def normalized(argv: list[str]) -> list[str]:
    """`--opt_name` spelled `--opt-name` (the parser knows the dashed spelling); values are left alone."""
    args = []
    for arg in argv:
        if arg == "--":
            args += argv[len(args) :]
            break
        if arg.startswith("--"):
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        args.append(arg)
    return args


def parse(argv: list[str]) -> tuple[str, Callable[..., Any], dict[str, Any]]:
    """(command name, function to call, its keyword arguments) of a command line; exit 2 on a usage error."""
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(normalized(argv))
    values = vars(namespace)
    name = values.pop("command")
    action = values.pop("action", None)
    if action is not None:  # `mgcc label <action>`
        name = f"{name} {action}"
    if unknown:  # said by the command's own parser, so the message names it
        PARSERS[name].error(f"unrecognized arguments: {' '.join(unknown)}")
    for key in values.pop("_required", []):
        if key not in values:
            PARSERS[name].error(f"{key.upper()} (or --{key.replace('_', '-')}) is required")
    target = _load(COMMANDS[name.split()[0]])
    return name, getattr(target(), action) if action else target, values


def _load(target: str) -> Any:
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def main(argv: list[str] | None = None) -> None:
    name, function, kwargs = parse(list(sys.argv[1:] if argv is None else argv))
    from mgcc.data.records import DatasetError
    from mgcc.errors import MgccError

    try:
        status = function(**kwargs)
    except (MgccError, DatasetError) as error:
        print(f"mgcc {name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(status, int) and status:  # `mgcc label serve`: the server's exit status
        raise SystemExit(status)


if __name__ == "__main__":
    main()
