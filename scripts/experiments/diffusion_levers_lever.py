"""One-off (2026-11-27): one diffusion lever on the demo, judged by fixed models.

Copies ``prepare/`` and the trained autoencoder of a finished demo run (the base), trains the diffusion model with
the preset's changes (``ldm.diffusion`` / ``ldm.sample`` / ``ldm.common`` keys merged over ``configs/demo.json``),
samples the same 48 seeds and masks, then scores the samples:

- lesion contrast: mean intensity inside the mask a sample was generated from minus outside (gray levels);
- one clear lesion as judged by each fixed judge run (a trained demo segmentation stage that is the same for every
  lever), and the Dice of its mask with the mask asked for (both from ``src/mgcc/lesions.py``).

Writes ``<out>/levers.json`` (per-sample values, for paired differences). Run with ``OMP_NUM_THREADS`` set when two
levers share the cores.

    python scripts/experiments/diffusion_levers_lever.py <changes.json> outputs/dv-<name> \
        --base outputs/demo-check --judges outputs/judge-blur outputs/judge-blur-s1
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

from mgcc import SEG_BUNDLE
from mgcc.lesions import has_clear_lesion, mask_dice
from mgcc.pipeline import LESIONS_CONFIGS, model_folder
from mgcc.presets import load_preset
from mgcc.stages import Run, run_bundle

ROOT = Path(__file__).resolve().parents[2]


def merged_preset(changes: Path, out: Path) -> Path:
    preset = json.loads((ROOT / "configs" / "demo.json").read_text())
    for section, keys in json.loads(changes.read_text()).get("ldm", {}).items():
        preset["ldm"].setdefault(section, {}).update(keys)
    path = out / "preset.json"
    path.write_text(json.dumps(preset, indent=1))
    return path


def prepare(base: Path, out: Path) -> None:
    for folder in ("prepare", "autoencoder"):
        if not (out / folder).exists():
            shutil.copytree(base / folder, out / folder, symlinks=True)
    (out / "ldm_models").mkdir(exist_ok=True)
    shutil.copy2(base / "ldm_models" / "autoencoder.pt", out / "ldm_models" / "autoencoder.pt")


def judge(judge_run: Path, images: Path, out: Path) -> Path:
    run = Run(load_preset("demo"), judge_run.resolve())
    pred = out / f"judged_by_{judge_run.name}"
    if not pred.exists():
        run_bundle(
            f"judge-{judge_run.name}",
            out,
            SEG_BUNDLE,
            LESIONS_CONFIGS,
            {
                "input_dir": str(images),
                "datalist": None,
                "ckpt_dir": str(model_folder(run) / "models"),
                "output_dir": str(pred),
            },
            shared=run.overrides("segmentation"),
        )
    return pred


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("changes", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, default=Path("outputs/demo-check"))
    parser.add_argument(
        "--judges", type=Path, nargs="+", default=[Path("outputs/judge-blur"), Path("outputs/judge-blur-s1")]
    )
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    preset = merged_preset(args.changes, args.out)
    prepare(args.base, args.out)
    for stage in ("diffusion", "sample"):
        if not (args.out / stage / "stage.json").exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mgcc",
                    "run",
                    "--preset",
                    str(preset),
                    "--out",
                    str(args.out),
                    "--stage",
                    stage,
                ],
                check=True,
            )
    images = args.out / "sample" / "images"
    records = json.loads((images / "manifest.json").read_text())["samples"]
    result = {
        "changes": json.loads(args.changes.read_text()),
        "files": [r["file"] for r in records],
        "contrast": [],
        "judges": {},
    }
    for r in records:
        image = np.asarray(Image.open(images / r["file"]).convert("L")).astype(float)
        mask = np.asarray(Image.open(images / r["label"]).convert("L")) > 127
        result["contrast"].append(float(image[mask].mean() - image[~mask].mean()))
    for judge_run in args.judges:
        pred = judge(judge_run, images, args.out)
        dice = mask_dice(images, pred)
        clear = [has_clear_lesion(np.asarray(Image.open(pred / f"{Path(r['file']).stem}_seg.png"))) for r in records]
        result["judges"][judge_run.name] = {"clear": clear, "dice": [dice[r["file"]] for r in records]}
    (args.out / "levers.json").write_text(json.dumps(result))
    summary = {"contrast": round(float(np.mean(result["contrast"])), 1)}
    for name, j in result["judges"].items():
        summary[name] = f"{sum(j['clear'])}/{len(j['clear'])} dice {np.mean(j['dice']):.3f}"
    print(args.out.name, json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
