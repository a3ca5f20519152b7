"""One table of generator levers: each row samples with one trained diffusion checkpoint and sampler setting, then
scores the samples with the LDM bundle's evaluate.json (FID, KID, frame intensity ratio, diversity, copies), all with
the same autoencoder, sample count, seed and feature network. Real-image features are cached (in the run's quality
stage folder) and shared by the rows.

    python scripts/generator_levers.py --run outputs/busi-cpu --out docs/results/generator-levers \\
        --row "old: diffusion=outputs/gen-old/ldm_models/diffusion.pt, diffusion_weights=raw" \\
        --row "old, DDIM 200: diffusion=outputs/gen-old/ldm_models/diffusion.pt, diffusion_weights=raw, \\
            num_inference_steps=200"

``--run`` is a pipeline output folder (its `prepare/dataset` and the `ldm` overrides of its `autoencoder` stage are
used); a row is ``name: key=value, ...`` where ``diffusion`` is the checkpoint and every other key is a bundle
override (values are JSON, or plain strings). ``train_seconds=...`` adds the training time the row's checkpoint
cost. A row ``name: pipeline=DIR`` takes a pipeline run's own sample and quality stages instead of sampling again
(same settings, so the same images). Writes ``<out>.json`` and ``<out>.md``; rows already in ``<out>.json`` are
kept (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mgcc import LDM_BUNDLE
from mgcc.stages import run_bundle

FIGURES = ("FID", "KID x 1000", "frame ratio", "MS-SSIM", "copies", "sampling s")


def parse_row(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    settings = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = part.partition("=")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value.strip()
    if "diffusion" not in settings and "pipeline" not in settings:
        raise SystemExit(f"row '{name}' names no diffusion checkpoint (diffusion=PATH) or pipeline run (pipeline=DIR)")
    return name.strip(), settings


def summarise(quality: dict, settings: dict, train_seconds: float | None, sampling_seconds: float) -> dict:
    return {
        "settings": settings,
        "train_seconds": train_seconds,
        "sampling_seconds": sampling_seconds,
        "fid": quality["fid"],
        "kid": quality["kid"],
        "frame_intensity_ratio": quality["frame_intensity_ratio"],
        "msssim": quality["diversity_msssim"]["generated"]["mean"],
        "possible_copies": quality["nearest_neighbour_rmse"]["possible_copies"],
        "num_samples": quality["num_samples"],
        "floor": {"fid": quality["fid"].get("validation_vs_train"), "kid": quality["kid"].get("validation_vs_train")},
    }


def pipeline_row(folder: Path) -> dict:
    """The sample and quality stages of a pipeline run, as a row."""
    seconds = {s: json.loads((folder / s / "stage.json").read_text())["seconds"] for s in ("diffusion", "sample")}
    settings = json.loads((folder / "sample" / "images" / "manifest.json").read_text())["settings"]
    quality = json.loads((folder / "quality" / "quality.json").read_text())
    return summarise(quality, {"pipeline": str(folder), **settings}, seconds["diffusion"], seconds["sample"])


def score_row(run: Path, work: Path, settings: dict) -> dict:
    """Sample with the row's settings, then evaluate; returns the quality figures and the sampling time."""
    base = json.loads((run / "sample" / "args.json").read_text())  # the run's own sampler settings (sample count...)
    ldm = {
        k: v
        for k, v in base.items()
        if k not in ("config_file", "meta_file", "logging_file", "bundle_root", "sample_dir")
    }
    ldm.update(ckpt_dir=str(run / "ldm_models"), output_dir=str(work))
    settings = dict(settings)
    train_seconds = settings.pop("train_seconds", None)
    diffusion = str(Path(settings.pop("diffusion")).resolve())
    samples = work / "samples"
    start = time.perf_counter()
    # the run's settings are passed where the configs know them; the row's own settings must all be known
    run_bundle(
        f"{work.name}-sample",
        work.parent,
        LDM_BUNDLE,
        ["inference.json"],
        {**settings, "diffusion_path": diffusion, "sample_dir": str(samples)},
        shared=ldm,
    )
    sampling = time.perf_counter() - start
    run_bundle(
        f"{work.name}-quality",
        work.parent,
        LDM_BUNDLE,
        ["train_autoencoder.json", "evaluate.json"],
        {"sample_dir": str(samples), "feature_cache_dir": str(run / "quality" / "feature_cache")},
        shared=ldm,
    )
    quality = json.loads((work / "quality.json").read_text())
    return summarise(quality, {"diffusion": diffusion, **settings}, train_seconds, sampling)


def table(rows: dict) -> str:
    lines = [
        "| lever | FID | KID x 1000 (mean ± std) | frame ratio | MS-SSIM | copies | training s | sampling s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    floor = None
    for name, r in rows.items():
        kid = r["kid"]["generated_vs_train"]
        train = f"{r['train_seconds']:.0f}" if r["train_seconds"] else ""
        lines.append(
            f"| {name} | {r['fid']['generated_vs_train']:.1f} | {kid['mean'] * 1000:.1f} ± {kid['std'] * 1000:.1f} "
            f"| {r['frame_intensity_ratio']:.3f} | {r['msssim']:.3f} | {r['possible_copies']} | {train} "
            f"| {r['sampling_seconds']:.0f} |"
        )
        floor = floor or r["floor"]
    if floor and floor["fid"] is not None:
        lines.append(
            f"| real validation vs train (floor) | {floor['fid']:.1f} | {floor['kid']['mean'] * 1000:.1f} ± "
            f"{floor['kid']['std'] * 1000:.1f} | 1 | | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="pipeline output folder (prepare + autoencoder done)")
    parser.add_argument("--out", type=Path, required=True, help="writes <out>.json and <out>.md")
    parser.add_argument("--row", action="append", required=True, help="'name: diffusion=PATH, key=value, ...'")
    args = parser.parse_args()
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    rows = json.loads(json_path.read_text())["rows"] if json_path.is_file() else {}
    work_root = args.out.parent / f"{args.out.name}_work"
    for index, text in enumerate(args.row):
        name, settings = parse_row(text)
        if name not in rows:
            if "pipeline" in settings:
                rows[name] = pipeline_row(Path(settings["pipeline"]).resolve())
            else:
                rows[name] = score_row(args.run.resolve(), work_root.resolve() / f"row{index:02d}", settings)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=2))
        print(f"[levers] {name}: FID {rows[name]['fid']['generated_vs_train']:.1f}", flush=True)
    ordered = {parse_row(t)[0]: rows[parse_row(t)[0]] for t in args.row}
    md_path.write_text(table(ordered) + "\n")
    print(table(ordered))


if __name__ == "__main__":
    main()
