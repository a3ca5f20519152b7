"""Levers for segmentation release 2.0, paired per image on BUSI validation (chosen there) and STU-Hospital (read as
the check), normal images included.

Training levers, each trained with the same budget and seeds (MGCC, the shipped generator's 400 synthetic images as
the unlabeled set, BUSI's release split with its normal images as labeled images with empty masks):
  current     the 1.x recipe: per-image Dice + BCE for every image (per_image_dice.json beside this file);
  batch_dice  the Dice term over the whole batch (`DiceCELoss(batch=True)`), so that a lesion drawn on a lesion-free
              image costs Dice (per image, an empty mask's Dice loss is flat: it teaches nothing about false positives);
  scanner     current + augmentations that mimic scanner differences (scanner_augment.json beside this file: affine
              zoom, aspect and shift; gain and gamma; down-up resolution; blur; noise; shadow-like dark bands);
  lesion_aware  train.json as it is since 1.5.0: per-image Dice on lesion images, S / (S + A) on lesion-free ones.
Inference levers on every trained model, at the network's 128x128: flip test-time augmentation (left-right),
averaging the main and auxiliary decoders, keeping the largest component, and "no lesion" when the predicted area is
below a fraction of the image (the fraction chosen on validation).

Per image: Dice (an empty prediction on an empty mask scores 1), lesion found (the prediction overlaps the truth),
left empty (lesion-free images). Paired differences against `current` / the plain main decoder, 95% bootstrap
intervals over images (seeds pooled, each image paired within its seed). Test split untouched.

    python scripts/experiments/robustness_levers.py --iterations 1500 --seeds 0 1 \
        --out docs/results/release-2.0-levers
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mgcc import LDM_BUNDLE, SEG_BUNDLE
from mgcc.bundles import importable_as_scripts

REPO = Path(__file__).resolve().parents[2]
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
ROWS = {
    "current": [str(Path(__file__).with_name("per_image_dice.json"))],
    "batch_dice": [str(Path(__file__).with_name("batch_dice.json"))],
    "scanner": [str(Path(__file__).with_name(name)) for name in ("per_image_dice.json", "scanner_augment.json")],
    "lesion_aware": [],
}
AREA_GRID = [0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1]


def sh(*cmd, cwd=REPO, log: Path | None = None) -> None:
    out = open(log, "a") if log else subprocess.DEVNULL
    subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, stdout=out, stderr=subprocess.STDOUT)


def prepare(work: Path) -> dict[str, Path]:
    mgcc = Path(sys.executable).parent / "mgcc"
    busi, stu = work / "busi", work / "stu"
    if not (busi / "datalist.json").is_file():
        sh(mgcc, "prepare", DATA / "Dataset_BUSI_with_GT", "--out", busi, "--include-normal", "--labeled-fraction", "1")
    if not (stu / "datalist.json").is_file():
        sh(mgcc, "prepare", DATA / "STU-Hospital", "--out", stu, "--labeled-fraction", "1", *STU_OPTIONS)
    return {"busi": busi, "stu": stu}


def synthetic(work: Path) -> Path:
    """The shipped generator's 400 samples (as `busi-release` samples them: 50 steps, seed 0)."""
    out = work / "synthetic"
    if not (out / "manifest.json").is_file():
        sh(
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--sample_dir",
            out,
            "--num_samples",
            "400",
            "--num_inference_steps",
            "50",
            "--seed",
            "0",
            cwd=LDM_BUNDLE,
            log=work / "sample.log",
        )
    return out


def train(row: str, seed: int, data: Path, samples: Path, work: Path, iterations: int) -> Path:
    """One training, resumed from its last checkpoint if an earlier sitting was stopped."""
    run = work / f"{row}-seed{seed}"
    done = run / "done"
    if done.is_file():
        return run
    configs = "[" + ",".join(f"'{c}'" for c in ["configs/train.json", *ROWS[row]]) + "]"
    resume = "true" if list((run / "models").glob("checkpoint_epoch=*.pt")) else "false"
    run.mkdir(parents=True, exist_ok=True)
    sh(
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--dataset_dir",
        data,
        "--unlabeled_source",
        "synthetic",
        "--synthetic_dir",
        samples,
        "--max_iterations",
        iterations,
        "--val_interval",
        250,
        "--seed",
        seed,
        "--output_dir",
        run,
        "--ckpt_dir",
        run / "models",
        "--num_workers",
        1,
        "--show_progress",
        "false",
        "--resume",
        resume,
        cwd=SEG_BUNDLE,
        log=run / "train.log",
    )
    done.write_text("finished\n")
    return run


def load_items(data: Path, sections: list[str]) -> list[dict]:
    """Images and labels at the network's size, by the bundle's own validation transforms."""
    from monai.bundle import ConfigParser

    datalist = json.loads((data / "datalist.json").read_text())
    entries = [
        {**e, "image": str(data / e["image"]), "label": str(data / e["label"])} for s in sections for e in datalist[s]
    ]
    parser = ConfigParser()
    parser.read_config(str(SEG_BUNDLE / "configs" / "train.json"))
    parser["dataset_dir"] = str(data)
    with importable_as_scripts(SEG_BUNDLE):
        transform = parser.get_parsed_content("validate#preprocessing")
        return [{**transform(e), "name": Path(e["image"]).stem, "class": e.get("class", "")} for e in entries]


def probabilities(run: Path, items: list[dict]) -> dict[str, np.ndarray]:
    """Per image (name -> array): main, flip-TTA and all-decoder-average lesion probabilities."""
    with importable_as_scripts(SEG_BUNDLE) as scripts:
        net = scripts.network.MGCCNet(base_channels=16, input_size=(128, 128))
        net.load_state_dict(torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True))
        net.eval()
        out = {}
        with torch.no_grad():
            for i, item in enumerate(items):
                x = torch.as_tensor(item["image"])[None].float()
                main = torch.sigmoid(net(x))
                flipped = torch.sigmoid(net(torch.flip(x, dims=[2]))).flip(dims=[2])  # left-right (W axis)
                torch.manual_seed(i)
                decoders = torch.stack([torch.sigmoid(o) for o in net.all_decoders(x)]).mean(0)
                out[item["name"]] = np.stack(
                    [main[0, 0].numpy(), ((main + flipped) / 2)[0, 0].numpy(), decoders[0, 0].numpy()]
                )
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def masks(prob: np.ndarray, area: float = 0.0) -> dict[str, np.ndarray]:
    """The inference variants' masks from one image's stacked probabilities."""
    base = prob[0] > 0.5
    variants = {
        "plain": base,
        "flip_tta": prob[1] > 0.5,
        "decoder_mean": prob[2] > 0.5,
        "largest_component": largest_component(base),
    }
    if area:
        variants["min_area"] = base if base.mean() >= area else np.zeros_like(base)
    return variants


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    total = pred.sum() + truth.sum()
    dice = 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)
    return {
        "dice": dice,
        "found": float((pred & truth).any()) if truth.any() else np.nan,
        "empty": float(not pred.any()) if not truth.any() else np.nan,
    }


def summary(rows: list[dict]) -> dict:
    d = np.array([r["dice"] for r in rows])
    found = np.array([r["found"] for r in rows if not np.isnan(r["found"])])
    empty = np.array([r["empty"] for r in rows if not np.isnan(r["empty"])])
    lesion = np.array([r["dice"] for r in rows if not np.isnan(r["found"])])
    return {
        "n": len(rows),
        "dice": float(d.mean()),
        "lesion_dice": float(lesion.mean()) if len(lesion) else None,
        "sensitivity": float(found.mean()) if len(found) else None,
        "specificity": float(empty.mean()) if len(empty) else None,
        "lesion_free_images": len(empty),
    }


def paired(a: list[float], b: list[float], seed: int = 0) -> dict:
    diff = np.asarray(b) - np.asarray(a)
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), (5000, len(diff)))].mean(1)
    return {
        "mean": float(diff.mean()),
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "better": int((diff > 1e-9).sum()),
        "worse": int((diff < -1e-9).sum()),
        "n": len(diff),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "release-2.0-levers")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "release-2.0-levers")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    data = prepare(opts.work)
    samples = synthetic(opts.work)
    runs = {
        (row, seed): train(row, seed, data["busi"], samples, opts.work, opts.iterations)
        for seed in opts.seeds
        for row in opts.rows
    }
    sets = {
        "busi_validation": load_items(data["busi"], ["validation"]),
        "stu_hospital": load_items(data["stu"], ["training", "validation", "test"]),
    }
    truth = {
        s: {it["name"]: torch.as_tensor(it["label"])[0].numpy() > 0.5 for it in items} for s, items in sets.items()
    }
    probs = {(key, s): probabilities(run, items) for key, run in runs.items() for s, items in sets.items()}

    # the "no lesion" area rule: chosen on BUSI validation per training row (seeds pooled), by mean Dice
    chosen = {}
    for row in opts.rows:

        def mean_dice(area: float, row: str = row) -> float:
            return float(
                np.mean(
                    [
                        scores(masks(p, area).get("min_area", masks(p)["plain"]), truth["busi_validation"][n])["dice"]
                        for seed in opts.seeds
                        for n, p in probs[((row, seed), "busi_validation")].items()
                    ]
                )
            )

        chosen[row] = max(AREA_GRID, key=lambda a: (round(mean_dice(a), 6), -a))
    per_image = {}  # (set, row, variant) -> list of score dicts over seeds x images, in a fixed order
    for (key, s), p in probs.items():
        row, seed = key
        for name in sorted(p):
            for variant, m in masks(p[name], chosen[row] or 1e-12).items():
                per_image.setdefault((s, row, variant), []).append(scores(m, truth[s][name]))
    results = {"iterations": opts.iterations, "seeds": opts.seeds, "chosen_min_area": chosen, "sets": {}}
    for s in sets:
        table = {}
        for (s2, row, variant), rows in per_image.items():
            if s2 != s:
                continue
            entry = summary(rows)
            entry["vs_current_plain"] = paired(
                [r["dice"] for r in per_image[(s, "current", "plain")]], [r["dice"] for r in rows]
            )
            entry["vs_same_row_plain"] = paired(
                [r["dice"] for r in per_image[(s, row, "plain")]], [r["dice"] for r in rows]
            )
            table[f"{row}/{variant}"] = entry
        results["sets"][s] = table
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{opts.out}.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"{opts.iterations} iterations, seeds {opts.seeds}; no-lesion area rule chosen on BUSI validation: "
        + ", ".join(f"{r} {a:.3f}" for r, a in chosen.items()),
        "",
    ]
    for s, table in results["sets"].items():
        lines += [
            f"### {s}",
            "",
            "| training / inference | Dice | lesion Dice | sensitivity | specificity | "
            "vs current/plain (95% CI, better/worse) | vs same training, plain |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in table.items():
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            a, b = e["vs_current_plain"], e["vs_same_row_plain"]
            lines.append(
                f"| {name} | {e['dice']:.3f} | {fmt(e['lesion_dice'])} | {fmt(e['sensitivity'])} | "
                f"{fmt(e['specificity'])} | {a['mean']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] "
                f"{a['better']}/{a['worse']} | {b['mean']:+.3f} [{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}] |"
            )
        lines.append("")
    Path(f"{opts.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
