"""Put trained models into the project's own bundles: the release step (maintainers only).

`run RUN`: the segmentation model of RUN/MODEL (an `mgcc run` training stage folder, default
`segmentation-mgcc-synthetic`) and RUN's generator, with every bundle config's defaults made the models' settings,
and the release version, changelog entry and `eval_metrics` (the BUSI test split of RUN, and any external tests
given) in both `metadata.json` files:

    python scripts/ship_release.py run outputs/busi-release --version 1.0.0 \
        --external stu=outputs/busi-release/external/STU-Hospital-all --note "..." --generator-note "..."

`segmentation MODELS`: the best checkpoint of a segmentation bundle training (`MODELS/model.pt`, the `ckpt_dir` of
`configs/train.json`) into the segmentation bundle alone; `eval_metrics` from the bundle's own `evaluate.json` runs
given as NAME=FOLDER (each with `evaluation/summary.json`); the weights must fit the bundle's defaults:

    python scripts/ship_release.py segmentation outputs/release-2.0/mgcc-batch-dice-6000/models --version 2.0.0 \
        --evaluation test=outputs/release-2.0/shipped/busi_test --evaluation stu=outputs/release-2.0/shipped/stu \
        --note "..."

Commit the weights once, after their numbers are measured (docs/results.md).
"""

import argparse
import json
import shutil
from pathlib import Path

from mgcc import LDM_BUNDLE, SEG_BUNDLE
from mgcc.export import _write_json, install_generator, install_segmentation, quality_metrics, summary_metrics


def _summary(folder: Path) -> dict:
    return json.loads((folder / "evaluation" / "summary.json").read_text())


def _release(bundle: Path, version: str, note: str, metrics: dict[str, float]) -> None:
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(version=version, changelog={version: note, **meta["changelog"]}, eval_metrics=metrics)
    _write_json(path, meta)


def _named_folders(items: list[str]) -> dict[str, Path]:
    return {name: Path(folder) for name, _, folder in (item.partition("=") for item in items)}


def ship_run(args: argparse.Namespace) -> None:
    stage = args.run / args.model
    metrics = summary_metrics("test", _summary(args.run / args.model.replace("segmentation", "evaluate", 1)))
    for name, folder in _named_folders(args.external).items():
        metrics |= summary_metrics(name, _summary(folder / "evaluate"))
    install_segmentation(stage, SEG_BUNDLE)
    _release(SEG_BUNDLE, args.version, args.note, metrics)
    install_generator(args.run, LDM_BUNDLE)
    quality = json.loads((args.run / "quality" / "quality.json").read_text())
    _release(LDM_BUNDLE, args.version, args.generator_note, quality_metrics(quality))
    print(f"shipped {stage} and the generator of {args.run} as version {args.version}: {metrics}")


def ship_segmentation(args: argparse.Namespace) -> None:
    from mgcc.bundles import importable_as_scripts

    with importable_as_scripts(SEG_BUNDLE):
        from monai.bundle import ConfigParser

        from scripts.network import checked_checkpoint

        parser = ConfigParser()
        parser.read_config(str(SEG_BUNDLE / "configs" / "inference.json"))
        checked_checkpoint(str(args.models / "model.pt"), parser["base_channels"], parser["spatial_size"])
    metrics: dict[str, float] = {}
    for name, folder in _named_folders(args.evaluation).items():
        metrics |= summary_metrics(name, _summary(folder))
    shutil.copyfile(args.models / "model.pt", SEG_BUNDLE / "models" / "model.pt")
    _release(SEG_BUNDLE, args.version, args.note, metrics)
    print(f"shipped {args.models / 'model.pt'} as segmentation {args.version}: {metrics}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="both bundles from an `mgcc run` folder")
    run.add_argument("run", type=Path)
    run.add_argument("--model", default="segmentation-mgcc-synthetic", help="the training stage folder of RUN to ship")
    run.add_argument("--version", required=True)
    run.add_argument("--note", required=True, help="the segmentation bundle's changelog entry")
    run.add_argument("--generator-note", required=True, help="the generator bundle's changelog entry")
    run.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="an `mgcc evaluate` output folder, reported as NAME_mean_dice, ...",
    )
    run.set_defaults(ship=ship_run)
    segmentation = commands.add_parser("segmentation", help="the segmentation bundle from a bundle training")
    segmentation.add_argument("models", type=Path, help="the training's ckpt_dir (its model.pt is shipped)")
    segmentation.add_argument("--version", required=True)
    segmentation.add_argument("--note", required=True, help="the changelog entry")
    segmentation.add_argument(
        "--evaluation",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="the output_dir of an evaluate.json run of these weights, reported as NAME_mean_dice, ...",
    )
    segmentation.set_defaults(ship=ship_segmentation)
    args = parser.parse_args()
    args.ship(args)


if __name__ == "__main__":
    main()
