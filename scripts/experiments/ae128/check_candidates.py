"""Generator 2.0 autoencoder screening (issue 42, plan stage 1): check that each 128x128 candidate overlay builds and
trains, and time its training step. No real training.

    python scripts/experiments/ae128/check_candidates.py --data outputs/release-2.0-levers/busi \
        --perceptual outputs/generator-2.0-prep/perceptual_seg_encoder.ts --candidates s1 --out /tmp/ae128/s1.json

For each candidate: the bundle's `train_autoencoder.json` + `common.json` + `<candidate>.json`, on a dataset of
`--images` real training images (one epoch, so one iteration); `gnetwork` and `train#trainer` are parsed, the
workflow runs, and then `--timed` more training steps on a batch of `--batch` images (the same images repeated) are
timed in CPU seconds (`time.process_time`, all threads of the process) and wall seconds, after one untimed step.
Run it with `OMP_NUM_THREADS=1` to time one core.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from mgcc import LDM_BUNDLE
from mgcc.bundles import importable_as_scripts

HERE = Path(__file__).resolve().parent
CONFIGS = LDM_BUNDLE / "configs"


def tiny_dataset(data: Path, folder: Path, images: int) -> Path:
    """A datalist of the first `images` benign/malignant training images (and 2 validation images) of `data`."""
    datalist = json.loads((data / "datalist.json").read_text())

    def pick(section: str, n: int) -> list[dict]:
        entries = [e for e in datalist[section] if e["class"] != "normal"][:n]
        return [{"image": str((data / e["image"]).resolve()), "class": e["class"]} for e in entries]

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "datalist.json"
    sections = {"training": pick("training", images), "unlabeled": [], "validation": pick("validation", 2)}
    path.write_text(json.dumps(sections))
    return folder


def check(candidate: str, dataset: Path, perceptual: Path, work: Path, batch: int, timed: int, overrides: dict) -> dict:
    """Build, run one iteration and time `timed` steps of one candidate overlay (with config `overrides`)."""
    configs = [str(CONFIGS / "train_autoencoder.json"), str(HERE / "common.json"), str(HERE / f"{candidate}.json")]
    cwd = os.getcwd()
    os.chdir(LDM_BUNDLE)
    try:
        with importable_as_scripts(LDM_BUNDLE):
            workflow = ConfigWorkflow(
                config_file=configs,
                meta_file=str(CONFIGS / "metadata.json"),
                workflow_type="train",
                dataset_dir=str(dataset),
                output_dir=str(work / "out"),
                ckpt_dir=str(work / "ckpt"),
                perceptual_weights_path=str(perceptual),
                autoencoder_max_epochs=1,
                resume=False,
                **overrides,
            )
            workflow.initialize()
            network = workflow.parser.get_parsed_content("gnetwork")
            trainer = workflow.parser.get_parsed_content("train#trainer")
            start = time.process_time()
            workflow.run()
            first = time.process_time() - start
            with open(work / "out" / "autoencoder_history.csv", newline="") as f:
                history = list(csv.DictReader(f))
            images = torch.cat([b["image"].as_subclass(torch.Tensor) for b in trainer.data_loader])
            step = {"image": images.repeat((batch + len(images) - 1) // len(images), 1, 1, 1)[:batch]}
            trainer._iteration(trainer, step)  # untimed warm-up
            cpu, wall = [], []
            for _ in range(timed):
                t_cpu, t_wall = time.process_time(), time.perf_counter()
                trainer._iteration(trainer, step)
                cpu.append(time.process_time() - t_cpu)
                wall.append(time.perf_counter() - t_wall)
            with torch.no_grad():
                latent = network.encode_stage_2_inputs(images[:1].to(trainer.state.device))
    finally:
        os.chdir(cwd)
    return {
        "candidate": candidate,
        "configs": [Path(c).name for c in configs],
        "overrides": overrides,
        "parameters": sum(p.numel() for p in network.parameters()),
        "latent_shape": list(latent.shape[1:]),
        "precision": str(trainer.autocast_dtype or torch.float32).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "first_run": {"images": len(images), "iterations": len(history), "cpu_s": round(first, 2), "row": history[-1]},
        "batch": batch,
        "cpu_s_per_iteration": [round(t, 3) for t in cpu],
        "wall_s_per_iteration": [round(t, 3) for t in wall],
        "snapshots": sorted(p.name for p in (work / "ckpt").glob("snapshot_*.pt")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an `mgcc prepare` output of BUSI")
    parser.add_argument("--perceptual", type=Path, required=True, help="scripts/export_perceptual_encoder.py's file")
    parser.add_argument("--candidates", nargs="+", default=["s1", "s2", "s3", "s4"])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timed", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="config overrides: amp=false, ...")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the results")
    parser.add_argument("--work", type=Path, help="keep the runs' files here (default: a temporary folder)")
    args = parser.parse_args()
    args.data, args.perceptual = args.data.resolve(), args.perceptual.resolve()  # the workflow runs in the bundle
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work.resolve() if args.work else Path(tmp)
        dataset = tiny_dataset(args.data, work / "data", args.images)
        for name in args.candidates:
            r = check(name, dataset, args.perceptual, work / name, args.batch, args.timed, overrides)
            results.append(r)
            print(
                f"{name}: {r['parameters'] / 1e6:.2f} M params, latent {r['latent_shape']}, {r['precision']}, "
                f"1 iteration on {r['first_run']['images']} images ran (loss {float(r['first_run']['row']['loss']):.3f}"
                f"), batch {r['batch']}: CPU s/it {r['cpu_s_per_iteration']}, wall s/it {r['wall_s_per_iteration']}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
