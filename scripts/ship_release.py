"""Put a trained run's models into the project's own bundles: the release step (maintainers only).

Copies the segmentation model of RUN/MODEL (a training stage folder, default `segmentation-mgcc-synthetic`) and RUN's
generator
into `bundles/*/models/`, makes every bundle config's defaults the models' settings, and writes the release
version, changelog entry and `eval_metrics` (the BUSI test split of RUN, and any external tests given) into both
`metadata.json` files. Commit the weights once, after their numbers are measured (docs/results.md).

    python scripts/ship_release.py outputs/busi-release --version 1.0.0 \
        --external stu=outputs/busi-release/external/STU-Hospital-all --note "..." --generator-note "..."
"""

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument(
        "--model", default="segmentation-mgcc-synthetic", help="the training stage folder of RUN to ship"
    )
    parser.add_argument("--version", required=True)
    parser.add_argument("--note", required=True, help="the segmentation bundle's changelog entry")
    parser.add_argument("--generator-note", required=True, help="the generator bundle's changelog entry")
    parser.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="an `mgcc evaluate` output folder, reported as NAME_mean_dice, ...",
    )
    args = parser.parse_args()
    stage = args.run / args.model
    metrics = summary_metrics("test", _summary(args.run / args.model.replace("segmentation", "evaluate", 1)))
    for item in args.external:
        name, _, folder = item.partition("=")
        metrics |= summary_metrics(name, _summary(Path(folder) / "evaluate"))
    install_segmentation(stage, SEG_BUNDLE)
    _release(SEG_BUNDLE, args.version, args.note, metrics)
    install_generator(args.run, LDM_BUNDLE)
    quality = json.loads((args.run / "quality" / "quality.json").read_text())
    _release(LDM_BUNDLE, args.version, args.generator_note, quality_metrics(quality))
    print(f"shipped {stage} and the generator of {args.run} as version {args.version}: {metrics}")


if __name__ == "__main__":
    main()
