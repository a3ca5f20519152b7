"""Masks of the shipped segmentation model by precision and runtime, paired per image.

`inference.json` with bfloat16 autocast (`--amp true`, what `auto` ran on a CPU with bfloat16 in hardware in
release 1.1.0), with float32 (the default since 1.2.0) and the ONNX export in ONNX Runtime (`inference_onnx.json`,
what the Deploy app and MONAI Label run on a CPU), on BUSI's release test split (lesion and normal images) and on
STU-Hospital. Per image: the Dice between two masks (1 when both are empty), the share of pixels that differ,
and each mask's Dice against the ground truth. On a CPU without bfloat16 in hardware oneDNN runs bfloat16 through
reference kernels: slower, the same rounding.

    python scripts/experiments/bf16_mask_agreement.py --out docs/results/bf16_mask_agreement
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "ultrasound_mgcc_segmentation"
DATA = REPO.parent / "shared" / "data"
STU_OPTIONS = [
    "--images",
    ".",
    "--masks",
    ".",
    "--image-pattern",
    "Test_Image_{id}.png",
    "--mask-pattern",
    "mask_{id}.png",
]
#: what runs: (name, configs, overrides)
RUNS = {
    "bf16": (["configs/inference.json"], ["--amp", "true"]),
    "fp32": (["configs/inference.json"], []),
    "onnx": (["configs/inference.json", "configs/inference_onnx.json"], []),
}
PAIRS = [("bf16", "onnx"), ("fp32", "onnx"), ("bf16", "fp32")]


def sh(*cmd, cwd=REPO, log: Path | None = None) -> None:
    out = open(log, "w") if log else subprocess.DEVNULL
    subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, stdout=out, stderr=subprocess.STDOUT)


def prepare(work: Path) -> dict[str, Path]:
    """The release split of BUSI (normal images included) and STU-Hospital, prepared by `mgcc prepare`."""
    mgcc = Path(sys.executable).parent / "mgcc"
    sets = {"busi_test": work / "busi", "stu_hospital": work / "stu"}
    if not (sets["busi_test"] / "datalist.json").is_file():
        sh(
            mgcc,
            "prepare",
            DATA / "Dataset_BUSI_with_GT",
            "--out",
            sets["busi_test"],
            "--include-normal",
            "--labeled-fraction",
            "1",
        )
    if not (sets["stu_hospital"] / "datalist.json").is_file():
        sh(
            mgcc,
            "prepare",
            DATA / "STU-Hospital",
            "--out",
            sets["stu_hospital"],
            "--labeled-fraction",
            "1",
            *STU_OPTIONS,
        )
    return sets


def onnx_bundle(work: Path) -> Path:
    """A copy of the bundle with the shipped weights exported to ONNX, as the README exports them."""
    copy = work / "bundle"
    if not (copy / "models" / "model.onnx").is_file():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("eval", "__pycache__"))
        size = json.loads((copy / "configs" / "inference.json").read_text())["spatial_size"]
        sh(
            sys.executable,
            "-m",
            "monai.bundle",
            "onnx_export",
            "network_def",
            "--filepath",
            "models/model.onnx",
            "--ckpt_file",
            "models/model.pt",
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
            "--use_trace",
            "True",
            "--input_shape",
            json.dumps([1, 1, *size]),
            "--converter_kwargs",
            "{'dynamo': False}",
            cwd=copy,
        )
    return copy


def infer(bundle: Path, prepared: Path, section: str | None, run: str, out: Path) -> None:
    """`run`'s masks of a datalist section, or of every prepared image (section None)."""
    if out.is_dir() and any(out.glob("*_seg.png")):
        return
    configs, extra = RUNS[run]
    out.mkdir(parents=True, exist_ok=True)
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    inputs = (
        ["--input_dir", prepared / "images"]
        if section is None
        else ["--datalist", prepared / "datalist.json", "--datalist_section", section]
    )
    sh(
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--dataset_dir",
        prepared,
        *inputs,
        "--output_dir",
        out,
        *extra,
        cwd=bundle,
        log=out.parent / f"{run}.log",
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def compare(prepared: Path, entries: list[dict], folders: dict[str, Path]) -> dict:
    masks = {run: {} for run in folders}
    truth = {}
    for entry in entries:
        stem = Path(entry["image"]).stem
        truth[stem] = np.asarray(Image.open(prepared / entry["label"]).convert("L")) > 0
        for run, folder in folders.items():
            masks[run][stem] = np.asarray(Image.open(folder / f"{stem}_seg.png")) > 0
    names = sorted(truth)
    result = {
        "n": len(names),
        "dice_to_truth": {run: float(np.mean([dice(m[n], truth[n]) for n in names])) for run, m in masks.items()},
    }
    for a, b in PAIRS:
        agreement = np.array([dice(masks[a][n], masks[b][n]) for n in names])
        differ = np.array([float((masks[a][n] != masks[b][n]).mean()) for n in names])
        worst = int(agreement.argmin())
        result[f"{a}_vs_{b}"] = {
            "mean_mask_dice": float(agreement.mean()),
            "images_below_0.99": int((agreement < 0.99).sum()),
            "worst_mask_dice": float(agreement[worst]),
            "worst_image": names[worst],
            "identical_images": int((differ == 0).sum()),
            "mean_pixels_differing": float(differ.mean()),
            "max_pixels_differing": float(differ.max()),
        }
    return result


def markdown(results: dict) -> str:
    lines = [
        "| data | images | pair | mean mask Dice | images < 0.99 | worst (image) | identical images | "
        "pixels differing: mean / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data, r in results["sets"].items():
        for a, b in PAIRS:
            p = r[f"{a}_vs_{b}"]
            lines.append(
                f"| {data} | {r['n']} | {a} vs {b} | {p['mean_mask_dice']:.4f} | {p['images_below_0.99']} | "
                f"{p['worst_mask_dice']:.3f} ({p['worst_image']}) | {p['identical_images']} | "
                f"{p['mean_pixels_differing']:.2e} / {p['max_pixels_differing']:.2e} |"
            )
    lines += [
        "",
        "Mean Dice against the ground truth: "
        + "; ".join(
            f"{data}: " + ", ".join(f"{run} {d:.4f}" for run, d in r["dice_to_truth"].items())
            for data, r in results["sets"].items()
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bf16-mask-agreement")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "bf16_mask_agreement")
    opts = parser.parse_args()
    prepared = prepare(opts.work)
    bundle = onnx_bundle(opts.work)
    results = {"model": "bundles/ultrasound_mgcc_segmentation/models/model.pt", "sets": {}}
    for data, folder in prepared.items():
        section = "test" if data == "busi_test" else None  # STU-Hospital: all 42 images
        datalist = json.loads((folder / "datalist.json").read_text())
        entries = datalist["test"] if section else [e for part in datalist.values() for e in part]
        folders = {run: opts.work / data / run for run in RUNS}
        for run, out in folders.items():
            infer(bundle, folder, section, run, out)
        results["sets"][data] = compare(folder, entries, folders)
        print(data, json.dumps(results["sets"][data]))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{opts.out}.json").write_text(json.dumps(results, indent=2))
    Path(f"{opts.out}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
