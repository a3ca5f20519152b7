#!/usr/bin/env python
"""Does the ONNX export of a trained segmentation model give the checkpoint's masks? On a prepared dataset's test
split: export ``models/model.pt`` with ``python -m monai.bundle onnx_export``, segment the split with
``inference.json`` (PyTorch, float32) and with ``inference.json`` + ``inference_onnx.json`` (ONNX Runtime), and
report the pixel agreement of the two sets of masks, each set's Dice against the labels, and the time of each run.

    python scripts/check_onnx_export.py --ckpt_dir outputs/busi-cpu/segmentation-mgcc-synthetic/models \\
        --dataset outputs/busi-cpu/prepare/dataset --spatial_size 128 --base_channels 16 \\
            --out docs/results/onnx_agreement

writes ``<out>.json``; the export and both sets of masks go to ``--work`` (default ``outputs/check_onnx_export``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mgcc import SEG_BUNDLE
from mgcc.stages import run_bundle


def dice(mask: np.ndarray, label: np.ndarray) -> float:
    total = mask.sum() + label.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(mask, label).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_dir", required=True, help="folder with the trained model.pt")
    parser.add_argument("--dataset", required=True, help="prepared dataset (datalist.json)")
    parser.add_argument("--spatial_size", type=int, required=True)
    parser.add_argument("--base_channels", type=int, required=True)
    parser.add_argument("--section", default="test")
    parser.add_argument("--out", required=True, help="output path without suffix")
    parser.add_argument("--work", default="outputs/check_onnx_export", help="folder for the export and the masks")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    models = work / "models"
    models.mkdir(parents=True)
    shutil.copy(Path(args.ckpt_dir) / "model.pt", models / "model.pt")
    size = [args.spatial_size, args.spatial_size]
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "onnx_export",
            "network_def",
            "--filepath",
            str(models / "model.onnx"),
            "--ckpt_file",
            str(models / "model.pt"),
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
            "--base_channels",
            str(args.base_channels),
            "--use_trace",
            "True",
            "--input_shape",
            json.dumps([1, 1, *size]),
            "--converter_kwargs",
            "{'dynamo': False}",
        ],
        cwd=SEG_BUNDLE,
        capture_output=True,
        text=True,
    )
    if export.returncode != 0:
        raise SystemExit(f"onnx_export failed:\n{export.stderr[-3000:]}")

    dataset = Path(args.dataset).resolve()
    common = {
        "dataset_dir": str(dataset),
        "datalist": str(dataset / "datalist.json"),
        "datalist_section": args.section,
        "ckpt_dir": str(models),
        "spatial_size": size,
        "base_channels": args.base_channels,
    }
    runs = {"torch": ["inference.json"], "onnx": ["inference.json", "inference_onnx.json"]}
    seconds = {}
    for name, configs in runs.items():
        result = run_bundle(f"infer_{name}", work, SEG_BUNDLE, configs, {**common, "output_dir": str(work / name)})
        seconds[name] = result.seconds

    entries = json.loads((dataset / "datalist.json").read_text())[args.section]
    agreement, dices = [], {name: [] for name in runs}
    for entry in entries:
        stem = Path(entry["image"]).name.rsplit(".", 1)[0]
        label = np.asarray(Image.open(dataset / entry["label"])) > 0
        masks = {name: np.asarray(Image.open(work / name / f"{stem}_seg.png")) > 0 for name in runs}
        agreement.append(float(np.mean(masks["torch"] == masks["onnx"])))
        for name in runs:
            dices[name].append(dice(masks[name], label))
    pixels = sum(np.asarray(Image.open(dataset / e["label"])).size for e in entries)
    same = sum(a * np.asarray(Image.open(dataset / e["label"])).size for a, e in zip(agreement, entries, strict=True))
    report = {
        "images": len(entries),
        "section": args.section,
        "spatial_size": size,
        "base_channels": args.base_channels,
        "pixel_agreement": same / pixels,
        "lowest_image_agreement": min(agreement),
        "dice": {name: statistics.mean(values) for name, values in dices.items()},
        "dice_difference": statistics.mean(dices["onnx"]) - statistics.mean(dices["torch"]),
        "seconds": seconds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
