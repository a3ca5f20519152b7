"""The pipeline report: `report.md` + `report.html` with PNG figures, from the files the stages wrote."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import markdown

from mgcc.figures import image_grid, plot_history
from mgcc.stages import MEASURED, read_records

METRICS = ("dice", "iou", "hd95")


def split_table(datalist: dict[str, list[dict]]) -> str:
    counts = {section: Counter(e.get("class", "?") for e in entries) for section, entries in datalist.items()}
    classes = sorted({c for counter in counts.values() for c in counter})
    lines = ["| split | " + " | ".join(classes) + " | total |", "|---" * (len(classes) + 2) + "|"]
    for section, counter in counts.items():
        lines.append(f"| {section} | " + " | ".join(str(counter[c]) for c in classes) + f" | {sum(counter.values())} |")
    return "\n".join(lines)


def metrics_row(name: str, summary: dict[str, Any]) -> str:
    cells = []
    for metric in METRICS:
        value = summary.get(metric, {})
        cells.append(
            f"{value['mean']:.4f} ± {value['std']:.4f}" if isinstance(value, dict) and "mean" in value else "n/a"
        )
    return f"| {name} | " + " | ".join(cells) + f" | {summary.get('n', 'n/a')} |"


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    head = ["| model | Dice | IoU | HD95 (px) | n |", "|---|---|---|---|---|"]
    return "\n".join(head + [metrics_row(name, summary) for name, summary in rows.items()])


def detection_text(summary: dict[str, Any]) -> str:
    """Lesion images and lesion-free images apart, in words, where the evaluation has lesion-free images (their
    empty masks make the mean Dice above a different number from the Dice on lesions): "" otherwise."""
    lesion, free = summary.get("lesion_images") or {}, summary.get("lesion_free_images") or {}
    if not free.get("n") or not lesion.get("n"):
        return ""
    return (
        f"lesion images: Dice {lesion['dice']['mean']:.4f}, lesion found in {lesion['sensitivity']:.1%} of "
        f"{lesion['n']}; lesion-free images: {free['specificity']:.1%} of {free['n']} left empty"
    )


def _kid(value: dict[str, Any]) -> str:
    return f"{value['mean'] * 1000:.2f} ± {value['std'] * 1000:.2f}" if "mean" in value else "n/a"


def quality_table(quality: dict[str, Any]) -> str:
    """The generator's quality figures (LDM bundle `evaluate.json`) as a two-column table."""
    recon = quality.get("reconstruction_validation", {})
    diversity = quality["diversity_msssim"]
    nearest = quality["nearest_neighbour_rmse"]
    real_nn = nearest.get("validation_to_train", nearest["train_to_train"])
    fid, kid = quality["fid"], quality["kid"]
    rows = [
        (f"FID vs train images, generated ({fid['num_generated']} images)", f"{fid['generated_vs_train']:.2f}"),
        (
            f"FID vs train images, real validation ({fid.get('num_validation', 0)} images: the floor)",
            f"{fid['validation_vs_train']:.2f}" if "validation_vs_train" in fid else "n/a",
        ),
        (
            "FID vs train images, generated subset as large as the validation set",
            f"{fid['generated_vs_train_at_validation_size']:.2f}" if "validation_vs_train" in fid else "n/a",
        ),
        ("KID x 1000 vs train images, generated", _kid(kid["generated_vs_train"])),
        ("KID x 1000 vs train images, real validation (the floor)", _kid(kid.get("validation_vs_train", {}))),
        (
            "KID x 1000 vs train images, validation through the autoencoder (the ceiling of decoded samples)",
            _kid(kid.get("reconstructed_validation_vs_train", {})),
        ),
        ("frame intensity, generated / real train (outer 4 px; real = 1)", f"{quality['frame_intensity_ratio']:.3f}"),
    ]
    rows += [(f"autoencoder reconstruction on validation: {k}", f"{v:.3f}") for k, v in sorted(recon.items())]
    rows += [
        ("MS-SSIM between random pairs, generated (lower = more diverse)", f"{diversity['generated']['mean']:.3f}"),
        ("MS-SSIM between random pairs, real train images", f"{diversity['real_train']['mean']:.3f}"),
        ("nearest training image, median RMSE: generated", f"{nearest['sample_to_train']['median']:.3f}"),
        ("nearest training image, median RMSE: held-out real", f"{real_nn['median']:.3f}"),
        (
            "possible copies (closer than any held-out real image)",
            f"{nearest['possible_copies']} of {quality['num_samples']}",
        ),
    ]
    contrast = quality.get("lesion_contrast")
    if contrast:
        rows += [
            (
                f"lesion minus surroundings, mean intensity (share darker by 10 gray levels): {name}",
                f"{contrast[key]['mean']:+.3f} ({contrast[key]['darker_share']:.2f} of {contrast[key]['n']})",
            )
            for key, name in (
                ("generated", "generated, in the mask it was generated from"),
                ("real_labeled", "real labeled train images"),
            )
        ]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])


def lesion_table(rates: dict[str, Any]) -> str:
    lines = ["| images | with one clear lesion | rate |", "|---|---|---|"]
    for name, rate in rates.items():
        lines.append(
            f"| {name.replace('_', ' ')} | {rate['with_clear_lesion']} of {rate['images']} | {rate['rate']:.2f} |"
        )
    return "\n".join(lines)


def report_summary(
    out: Path, evaluations: dict[str, Any], quality: dict[str, Any] | None, rates: dict[str, Any] | None
) -> dict[str, Any]:
    """Every number of the report, for tools: `<out>/report/summary.json`."""
    result: dict[str, Any] = {"test": evaluations, "stages": {}}
    for record in read_records(out):
        result["stages"][record["name"]] = {key: record[key] for key, _, _ in MEASURED if key in record}
    if quality is not None:
        result["generator"] = {
            key: quality[key]
            for key in (
                "fid",
                "kid",
                "frame_intensity_ratio",
                "reconstruction_validation",
                "diversity_msssim",
                "nearest_neighbour_rmse",
                "num_samples",
            )
            if key in quality
        }
    if rates is not None:
        result["synthetic_lesion_rate"] = rates["synthetic"]["rate"]
        result["real_test_lesion_rate"] = rates["real_test"]["rate"]
        result["lesion_rule"] = rates["synthetic"]["rule"]
        if "mask_dice" in rates["synthetic"]:
            result["synthetic_mask_dice"] = rates["synthetic"]["mask_dice"]
    return result


def stage_table(out: Path) -> str:
    """One row per stage record: what it measured (`MEASURED`), blank where an older record lacks it."""
    lines = [
        "| stage | " + " | ".join(heading for _, heading, _ in MEASURED) + " |",
        "|---" * (len(MEASURED) + 1) + "|",
    ]
    for record in read_records(out):
        cells = [form.format(record[key]) if key in record else "" for key, _, form in MEASURED]
        lines.append(f"| {record['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _copy_figures(sources: list[Path], figures: Path, prefix: str) -> list[Path]:
    copied = []
    for src in sources:
        dst = figures / f"{prefix}_{src.name}"
        shutil.copyfile(src, dst)
        copied.append(dst)
    return copied


def write_report(out: Path, folder: Path, preset: dict[str, Any]) -> Path:
    """Write `<folder>/report.md`, `<folder>/report.html` and `<folder>/figures/*.png` for the run in `out`."""
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    dataset = out / "prepare" / "dataset"
    datalist = json.loads((dataset / "datalist.json").read_text())
    md = [f"# MGCC pipeline report — preset `{preset['name']}`", "", preset.get("description", ""), ""]

    md += ["## Data and split", "", f"Prepared dataset: `{dataset}`", "", split_table(datalist), ""]

    md += ["## Learning curves", ""]
    for csv_path in sorted(p for p in out.glob("*/*_history.csv") if ".stale-" not in p.parent.name):
        png = plot_history(
            csv_path,
            figures / f"{csv_path.parent.name}_{csv_path.stem}.png",
            f"{csv_path.parent.name}: {csv_path.stem}",
        )
        if png:
            md += [f"![{csv_path.parent.name} {csv_path.stem}](figures/{png.name})", ""]

    real = [dataset / e["image"] for e in datalist.get("training", []) + datalist.get("unlabeled", [])]
    synthetic = sorted((out / "sample" / "images").glob("*.png"))
    grid = image_grid({"real (train split)": real, "synthetic (LDM)": synthetic}, figures / "real_vs_synthetic.png")
    if grid:
        md += ["## Real vs synthetic images", "", f"![real vs synthetic](figures/{grid.name})", ""]
    quality_file, rates_file = out / "quality" / "quality.json", out / "lesions" / "lesion_rate.json"
    quality = json.loads(quality_file.read_text()) if quality_file.is_file() else None
    rates = json.loads(rates_file.read_text()) if rates_file.is_file() else None
    if quality is not None:
        md += ["## Generator quality", "", quality_table(quality), ""]
    if rates is not None:
        md += [
            "## Lesions found by the trained model",
            "",
            "Share of images in which the trained MGCC model finds one clear lesion: the largest connected "
            "component of the predicted mask covers at least 0.5% of the image and at least 70% of all predicted "
            "lesion pixels.",
            "",
            lesion_table(rates),
            "",
        ]
        if "mask_dice" in rates["synthetic"]:
            agreement = rates["synthetic"]["mask_dice"]
            md += [
                f"Each synthetic image was generated from a lesion mask; the model's mask agrees with it at Dice "
                f"{agreement['mean']:.3f} ± {agreement['std']:.3f} (n = {agreement['n']}).",
                "",
            ]

    evaluations = {
        p.parent.parent.name: json.loads(p.read_text())
        for p in sorted(out.glob("evaluate*/evaluation/summary.json"))
        if ".stale-" not in p.parent.parent.name
    }
    md += [
        "## Test metrics",
        "",
        "Per image, then averaged (mean ± std); Dice/IoU at sigmoid 0.5; "
        "HD95 in pixels of the evaluated size; an empty prediction on an empty mask scores 1.",
        "",
        metrics_table(evaluations) if evaluations else "No evaluation results yet.",
        "",
    ]
    md += [f"- {name}: {detection_text(summary)}" for name, summary in evaluations.items() if detection_text(summary)]
    for name in evaluations:
        overlays = sorted((out / name / "evaluation").glob("*.png"))
        if overlays:
            md += [f"### Overlays: {name}", ""]
            md += [f"![{p.stem}](figures/{p.name})" for p in _copy_figures(overlays, figures, name)] + [""]

    external = {
        p.parents[2].name: json.loads(p.read_text())
        for p in sorted(out.glob("external/*/evaluate/evaluation/summary.json"))
    }
    if external:
        md += [
            "## External tests (`mgcc evaluate`)",
            "",
            "The trained model scored on other datasets, at its own input size.",
            "",
            metrics_table(external),
            "",
        ]
        evaluations = {**evaluations, **{f"external/{name}": summary for name, summary in external.items()}}

    md += ["## Time and peak memory per stage", "", stage_table(out), ""]
    (folder / "summary.json").write_text(json.dumps(report_summary(out, evaluations, quality, rates), indent=2))
    text = "\n".join(md)
    (folder / "report.md").write_text(text)
    html = markdown.markdown(text, extensions=["tables"])
    (folder / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>MGCC report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>"
        + html
        + "</body></html>"
    )
    return folder / "report.md"
