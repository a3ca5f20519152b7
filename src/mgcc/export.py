"""`mgcc export`: a trained run becomes two ready MONAI bundles that need no overrides.

`<out>/ultrasound_mgcc_segmentation/` is the segmentation bundle with the trained `models/model.pt` (its training
size recorded in the weights), `models/model.ts` (scripted with the packaged configs embedded, as the Deploy app
reads them), `models/model.onnx` (what the Deploy and MONAI Label apps run on CPU), configs whose defaults are the
model's settings (width, input size, ...), `metadata.json`
with the run's test metrics as `eval_metrics` and a changelog entry, and a `docs/README.md` that starts with the
run's numbers, data and command. `<out>/ultrasound_ldm_generation/` is the generator bundle with the trained
autoencoder and diffusion weights (the latent normalisation travels in `diffusion.pt`), the bundle's perceptual
network (`models/perceptual_encoder.ts`) and configs whose defaults are the run's generator and sampler settings.
Either folder is what `python -m monai.bundle run`, MONAI Label (`mgcc label serve --bundle DIR`) and the Deploy app
(`-m DIR`) take as it is.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mgcc import LDM_BUNDLE, SEG_BUNDLE
from mgcc.stages import StageError, make_output_folder
from mgcc.trained import model_settings, training_stage

#: what a bundle copy leaves out: weights and outputs of the source folder, caches
LEFT_OUT = shutil.ignore_patterns("models", "eval", "__pycache__", "*.pyc")
#: written into every exported bundle: the mark that a later export may replace the folder
EXPORT_RECORD = ".mgcc-export"
#: what the diffusion UNet outputs, by the scheduler's prediction type
PREDICTED = {"epsilon": "predicted noise", "v_prediction": "predicted velocity", "sample": "predicted latent"}
#: shipped with the generator bundle and kept in every export: the default perceptual network of its autoencoder
LDM_PACKAGED_MODELS = ("perceptual_encoder.ts",)
#: run-specific LDM settings (paths, where the run wrote), not properties of the generator
LDM_RUN_ONLY = (
    "config_file",
    "meta_file",
    "logging_file",
    "bundle_root",
    "dataset_dir",
    "output_dir",
    "ckpt_dir",
    "sample_dir",
    "resume",
)


SCALAR = r'(?:"(?:[^"\\]|\\.)*"|-?[\d.eE+-]+|true|false|null)'


def _write_json(path: Path, data: Any) -> None:
    """JSON as the bundles write it: indent 4, short lists of scalars on one line."""
    text = json.dumps(data, indent=4)

    def one_line(match: re.Match) -> str:
        line = "[" + re.sub(r",\n\s*", ", ", match[1]) + "]"
        return line if len(line) <= 60 else match[0]

    text = re.sub(rf"\[\s*((?:{SCALAR},\s*)*{SCALAR})\s*\]", one_line, text)
    path.write_text(text + "\n")


def set_defaults(configs: Path, values: dict[str, Any]) -> None:
    """Each top-level key of `values` that a config file of `configs` defines gets that value as its default."""
    for path in sorted(configs.glob("*.json")):
        config = json.loads(path.read_text())
        changed = {k: v for k, v in values.items() if k in config and config[k] != v and "#" not in k}
        if changed:
            _write_json(path, {**config, **changed})


def refuse_to_overwrite(target: Path) -> None:
    """Stop (StageError, nothing written) unless `target` is new or an earlier export holding only what it wrote:
    the project's own bundles, a folder of the user's and an earlier export with files added (results, notes)
    are never replaced."""
    if target.resolve() in (SEG_BUNDLE.resolve(), LDM_BUNDLE.resolve()):
        raise StageError(f"{target}: is the project's own bundle, which an export never replaces; choose another --out")
    if not target.exists():
        return
    if not (target / EXPORT_RECORD).is_file():
        raise StageError(
            f"{target}: exists and is not an earlier export ({EXPORT_RECORD} missing); choose another "
            "--out or move it away, nothing was written"
        )
    written = set(json.loads((target / EXPORT_RECORD).read_text())["files"])
    added = sorted(
        str(p.relative_to(target))
        for p in target.rglob("*")
        if p.is_file() and str(p.relative_to(target)) not in written and p.name != EXPORT_RECORD
    )
    if added:
        raise StageError(
            f"{target}: an earlier export with files added since ({', '.join(added[:3])}"
            f"{', ...' if len(added) > 3 else ''}); move them or choose another --out, nothing was written"
        )


def _copy_bundle(source: Path, target: Path) -> Path:
    """A clean copy of a bundle folder (no weights, outputs or caches) at `target`, replacing an earlier one."""
    incoming = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(source, incoming, ignore=LEFT_OUT)
    (incoming / "models").mkdir()
    return incoming


def _swap_in(incoming: Path, target: Path) -> None:
    """Move a completed copy into place, with the list of the files it wrote; an export stopped midway keeps the
    previous one."""
    files = sorted(str(p.relative_to(incoming)) for p in incoming.rglob("*") if p.is_file())
    (incoming / EXPORT_RECORD).write_text(json.dumps({"files": files}, indent=1) + "\n")
    old = target.with_name(f".{target.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    incoming.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def summary_metrics(prefix: str, summary: dict) -> dict[str, float]:
    """`eval_metrics` entries of an evaluation's `summary.json`: `<prefix>_mean_{dice,iou,hd95}`, and where the test
    set has them, `<prefix>_lesion_mean_dice`, `<prefix>_sensitivity` and `<prefix>_specificity`."""
    metrics = {f"{prefix}_mean_{m}": round(summary[m]["mean"], 4) for m in ("dice", "iou", "hd95")}
    lesion, free = summary.get("lesion_images") or {}, summary.get("lesion_free_images") or {}
    if lesion.get("dice") and free.get("n"):  # lesion Dice differs from the mean only with lesion-free images
        metrics[f"{prefix}_lesion_mean_dice"] = round(lesion["dice"]["mean"], 4)
    if lesion.get("sensitivity") is not None:
        metrics[f"{prefix}_sensitivity"] = round(lesion["sensitivity"], 4)
    if free.get("specificity") is not None:
        metrics[f"{prefix}_specificity"] = round(free["specificity"], 4)
    return metrics


def quality_metrics(quality: dict) -> dict[str, float]:
    """`eval_metrics` entries of a generator's `quality.json`: FID and KID x 1000 against the train images."""
    return {
        "fid_vs_train": round(quality["fid"]["generated_vs_train"], 2),
        "kid_vs_train_x1000": round(quality["kid"]["generated_vs_train"]["mean"] * 1000, 2),
    }


def _release(metadata: Path, run_name: str, note: str, metrics: dict[str, float]) -> str:
    meta = json.loads(metadata.read_text())
    version = f"{meta['version']}+{run_name}"
    meta["version"] = version
    meta["changelog"] = {version: note, **meta["changelog"]}
    if metrics:
        meta["eval_metrics"] = metrics
    _write_json(metadata, meta)
    return version


def _readme(readme: Path, section: list[str]) -> None:
    """Put the trained model's section right after the README's title."""
    title, _, rest = readme.read_text().partition("\n")
    readme.write_text("\n".join([title, "", *section, rest.lstrip("\n")]))


#: both exports in one process (each `python -m monai.bundle` start costs about 5 s of imports on 2 cores)
EXPORTS = """
import json, sys
from monai.bundle import ckpt_export, onnx_export
common, size = json.loads(sys.argv[1]), json.loads(sys.argv[2])
exports = (("TorchScript", ckpt_export, {"filepath": "models/model.ts"}),
           ("ONNX", onnx_export, {"filepath": "models/model.onnx", "use_trace": True, "input_shape": [1, 1, *size],
                                  "converter_kwargs": {"dynamo": False}}))
for kind, export, options in exports:
    try:
        export("network_def", **common, **options)
    except Exception as error:
        sys.exit(f"{kind} export failed: {error}")
"""


def _export_network(bundle: Path, size: list[int]) -> None:
    """`models/model.ts` (scripted, with the packaged configs embedded) and `models/model.onnx` (traced at the
    model's input size): what the bundle README's `ckpt_export` and `onnx_export` commands write, run in one
    process from the bundle folder. The Deploy and MONAI Label apps run the ONNX export on CPU."""
    common = {
        "ckpt_file": "models/model.pt",
        "meta_file": "configs/metadata.json",
        "config_file": "configs/inference.json",
        "bundle_root": ".",
    }
    proc = subprocess.run(
        [sys.executable, "-c", EXPORTS, json.dumps(common), json.dumps(list(size))],
        cwd=bundle,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise StageError(f"export in {bundle} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")


def install_segmentation(stage: Path, bundle: Path) -> None:
    """The model trained in `stage` into `bundle`: `models/model.pt` (its training size recorded) and config
    defaults equal to the model's settings."""
    import torch

    _, settings = model_settings(stage)
    set_defaults(bundle / "configs", settings)
    weights = torch.load(stage / "models" / "model.pt", map_location="cpu", weights_only=True)
    if not any(weights.get("input_size", torch.zeros(2)).tolist()):  # trained before the size was recorded
        weights["input_size"] = torch.tensor([int(v) for v in settings["spatial_size"]], dtype=torch.int64)
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(weights, bundle / "models" / "model.pt")


def export_segmentation(stage: Path, target: Path, run_name: str) -> Path:
    """The segmentation bundle with the model trained in `stage` (a training stage folder) at `target`."""
    configs, settings = model_settings(stage)
    size = [int(v) for v in settings["spatial_size"]]
    bundle = _copy_bundle(SEG_BUNDLE, target)
    install_segmentation(stage, bundle)
    _export_network(bundle, size)

    summary_file = stage.parent / stage.name.replace("segmentation", "evaluate", 1) / "evaluation" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    metrics = summary_metrics("test", summary) if summary else {}
    command = json.loads((stage / "args.json").read_text())
    version = _release(
        bundle / "configs" / "metadata.json",
        run_name,
        f"trained weights from {stage} ({', '.join(configs)}, width {settings['base_channels']}, {size[0]}x{size[1]})",
        metrics,
    )
    numbers = (
        [
            f"| test {m} | {summary[m]['mean']:.4f} ± {summary[m]['std']:.4f} (n {summary['n']}) |"
            for m in ("dice", "iou", "hd95")
        ]
        if summary
        else ["| test metrics | not evaluated |"]
    )
    _readme(
        bundle / "docs" / "README.md",
        [
            f"## This trained model (version `{version}`, exported {datetime.date.today().isoformat()})",
            "",
            f"Trained by the MGCC pipeline in `{stage}` with `{' + '.join(configs)}` at width "
            f"`base_channels` {settings['base_channels']} and `spatial_size` {size}; every config's defaults are these "
            "settings, so the commands below need no overrides (the weights record their size, and a config of "
            "another size or width is refused by name).",
            "",
            "| figure | value |",
            "|---|---|",
            *numbers,
            f"| training data | `{command.get('dataset_dir', '?')}` |",
            f"| unlabeled images | {command.get('unlabeled_source', 'none')} |",
            "",
            "```",
            "python -m monai.bundle run --config_file configs/inference.json --input_dir IN --output_dir OUT",
            "```",
            "",
            "The sections below describe the bundle in general.",
            "",
        ],
    )
    _swap_in(bundle, target)
    return target


def _latent_data_format(configs: Path, mask: bool, prediction_type: str) -> None:
    """`network_data_format` of the packaged generator's diffusion UNet: its latent shape at the packaged
    settings, plus the lesion-mask input channel of a mask-conditioned model, and what it predicts."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_file(configs / "inference.json"))
    channels, *spatial = (int(v) for v in parser.get_parsed_content("latent_shape"))
    meta = json.loads((configs / "metadata.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    image["channel_def"] = {str(i): "latent" for i in range(channels)}
    if mask:
        image["channel_def"][str(channels)] = "lesion mask at latent size (lesion fraction 0-1; -1: no mask)"
    image.update(num_channels=len(image["channel_def"]), spatial_shape=spatial)
    predicted = PREDICTED[prediction_type]
    pred.update(num_channels=channels, spatial_shape=spatial, channel_def={str(i): predicted for i in range(channels)})
    _write_json(configs / "metadata.json", meta)


def install_generator(run: Path, bundle: Path) -> dict[str, Any]:
    """The generator trained in `run` into `bundle`: `models/{autoencoder,diffusion}.pt` and config defaults equal
    to the run's generator and sampler settings (returned); a mask-conditioned generator's masks travel along, and
    the bundle's perceptual network stays (its autoencoder config's default)."""
    import torch

    settings: dict[str, Any] = {}
    for stage in ("autoencoder", "diffusion", "sample"):
        args = json.loads((run / stage / "args.json").read_text())
        settings.update({k: v for k, v in args.items() if k not in LDM_RUN_ONLY})
    if settings.get("mask_conditional"):  # it generates from the run's labeled masks: they travel with it
        (bundle / "masks").mkdir()
        dataset = run / "prepare" / "dataset"
        labeled = [e["label"] for e in json.loads((dataset / "datalist.json").read_text())["training"] if "label" in e]
        for i, label in enumerate(labeled):  # numbered: name order is the datalist's order, as in the run
            shutil.copyfile(dataset / label, bundle / "masks" / f"{i:05d}_{Path(label).name}")
        settings["mask_dir"] = "$@bundle_root + '/masks'"
    set_defaults(bundle / "configs", settings)
    (bundle / "models").mkdir(exist_ok=True)
    for name in ("autoencoder.pt", "diffusion.pt"):
        shutil.copyfile(run / "ldm_models" / name, bundle / "models" / name)
    for name in LDM_PACKAGED_MODELS:
        shutil.copyfile(LDM_BUNDLE / "models" / name, bundle / "models" / name)
    diffusion = torch.load(bundle / "models" / "diffusion.pt", map_location="cpu", weights_only=True)
    trained_as = diffusion.get("settings", {}).get("prediction_type", "epsilon")  # the sampler's rule, as it reads it
    _latent_data_format(bundle / "configs", mask=bool(settings.get("mask_conditional")), prediction_type=trained_as)
    return settings


def export_generator(run: Path, target: Path, run_name: str) -> Path:
    """The generator bundle with the autoencoder and diffusion weights of the run in `run` at `target`."""
    bundle = _copy_bundle(LDM_BUNDLE, target)
    settings = install_generator(run, bundle)
    quality_file = run / "quality" / "quality.json"
    quality = json.loads(quality_file.read_text()) if quality_file.is_file() else None
    metrics = quality_metrics(quality) if quality else {}
    version = _release(bundle / "configs" / "metadata.json", run_name, f"trained weights from {run}", metrics)
    _readme(
        bundle / "docs" / "README.md",
        [
            f"## This trained generator (version `{version}`, exported {datetime.date.today().isoformat()})",
            "",
            f"Trained by the MGCC pipeline in `{run}`; every config's defaults are the run's settings "
            f"({', '.join(f'`{k}` {v}' for k, v in sorted(settings.items()))}).",
            "",
            *(
                [
                    f"FID vs train images {metrics['fid_vs_train']}, KID x 1000 {metrics['kid_vs_train_x1000']} "
                    f"({quality['num_samples']} samples)."
                ]
                if quality
                else []
            ),
            "",
            "```",
            "python -m monai.bundle run --config_file configs/inference.json --sample_dir OUT",
            "```",
            "",
            "The sections below describe the bundle in general.",
            "",
        ],
    )
    _swap_in(bundle, target)
    return target


def export(model: str, out: str, generator: bool = True) -> None:
    """Write ready bundles of a trained run: the segmentation bundle (and the generator bundle) under OUT.

    Args:
        model: a training stage folder (`<run>/segmentation-mgcc-synthetic`), its `models/model.pt`, or a run folder
            with one trained model.
        out: output folder; gets `ultrasound_mgcc_segmentation/` (and `ultrasound_ldm_generation/`).
        generator: also export the run's generator, when the run trained one.
    """
    stage = training_stage(Path(model), argument="MODEL")
    target = Path(out).resolve()
    make_output_folder(target)
    run_name = "".join(c if c.isalnum() or c in "-." else "-" for c in stage.parent.name)
    with_generator = generator and (stage.parent / "ldm_models" / "diffusion.pt").is_file()
    for name in (SEG_BUNDLE.name, LDM_BUNDLE.name) if with_generator else (SEG_BUNDLE.name,):
        refuse_to_overwrite(target / name)
    written = [export_segmentation(stage, target / SEG_BUNDLE.name, run_name)]
    if with_generator:
        written.append(export_generator(stage.parent, target / LDM_BUNDLE.name, run_name))
    for folder in written:
        print(f"[mgcc] bundle: {folder}")
