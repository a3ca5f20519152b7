"""Throughput and peak memory of the MONAI Deploy app (apps/deploy) on N phantom images; writes JSON.

    .venv/bin/python scripts/benchmark_deploy.py [--n 100] [--size 256] [--bundle DIR] [--width W]
        [--model-forms torchscript onnx bundle_folder] [--compare-bundle] [--out outputs/benchmark_deploy.json]

Runs in the project venv (phantom data, bundle weights) and launches the app in the deploy venv
(`apps/deploy/setup_env.sh`, or `--deploy-python`). The bundle is copied to a temporary folder; its
`models/model.pt` is used when present (trained weights), else seeded random weights are written there
(timing does not depend on the weight values; the JSON says which). `--width` overrides `base_channels`
(default: the bundle's own). Each model form (`--model-forms`: the TorchScript export, the ONNX export, the
bundle folder with its checkpoint) is timed in turn in the same run, in its own copy of the bundle. Each app run
is a fresh process, measured end to end: the JSON has, per form, the wall time of a 1-image run (start-up: Python,
Holoscan, model load), of the N-image run, `images_per_second` = N / wall, the steady-state throughput
(N - 1) / (wall_N - wall_1), the mean seconds per image in reading, inference (the bundle operator:
preprocessing, network, postprocessing) and writing, from the app's `predictions.json` (`rest`: start-up and
scheduling, per image), and the peak resident memory of the app process (`ru_maxrss` from `os.wait4`).
`--compare-bundle` also times `python -m monai.bundle run` on the
same images. The machine's load average is recorded: on a shared machine the numbers are upper bounds on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource  # noqa: F401  (documents that ru_maxrss is in KiB on Linux)
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "deploy"

SEED_WEIGHTS = r"""
import sys, torch
sys.path.insert(0, ".")
from monai.bundle import ConfigParser
parser = ConfigParser()
parser.read_meta("configs/metadata.json")
parser.read_config("configs/inference.json")
torch.manual_seed(0)
net = parser.get_parsed_content("network_def")
torch.save(net.state_dict(), "models/model.pt")
print(sum(p.numel() for p in net.parameters()))
"""


#: model forms made by an export of the checkpoint: (file, `python -m monai.bundle` command for the input size)
EXPORTS = {
    "torchscript": ("models/model.ts", lambda size: ["ckpt_export", "network_def"]),
    "onnx": (
        "models/model.onnx",
        lambda size: [
            "onnx_export",
            "network_def",
            "--use_trace",
            "True",
            "--input_shape",
            json.dumps([1, 1, *size]),
            "--converter_kwargs",
            "{'dynamo': False}",
        ],
    ),
}


def export_model(bundle: Path, form: str, size: list[int]) -> Path:
    """Export the bundle's `models/model.pt` as `form` (a key of EXPORTS) at input `size`; returns the file."""
    filepath, export = EXPORTS[form]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            *export(size),
            "--filepath",
            filepath,
            "--ckpt_file",
            "models/model.pt",
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
        ],
        cwd=bundle,
        check=True,
        capture_output=True,
    )
    return bundle / filepath


def timed(cmd: list, cwd: Path | None = None) -> dict:
    """Runs `cmd`, returns wall seconds and the peak RSS (MiB) of that process; raises on failure."""
    log = tempfile.TemporaryFile(mode="w+")
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        log.seek(0)
        raise SystemExit(f"error: {' '.join(map(str, cmd))} exited {proc.returncode}:\n{log.read()[-4000:]}")
    return {"wall_s": round(wall, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=256, help="phantom image size (pixels, square)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle", type=Path, default=REPO / "bundles" / "ultrasound_mgcc_segmentation")
    ap.add_argument("--width", type=int, default=None, help="override base_channels (default: the bundle's)")
    ap.add_argument(
        "--model-forms",
        nargs="+",
        choices=["bundle_folder", *EXPORTS],
        default=["torchscript", "onnx"],
        help="what the app is given, each timed in turn: the bundle folder with its checkpoint, or an export",
    )
    ap.add_argument("--compare-bundle", action="store_true", help="also time `python -m monai.bundle run`")
    ap.add_argument("--deploy-python", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmark_deploy.json")
    args = ap.parse_args(argv)
    if args.n < 2:
        ap.error("--n must be at least 2")

    deploy_py = args.deploy_python
    if deploy_py is None:
        subprocess.run(["bash", str(APP / "setup_env.sh")], check=True)
        deploy_py = REPO / ".venv-deploy" / "bin" / "python"
    if not (args.bundle / "configs" / "inference.json").is_file():
        raise SystemExit(f"error: {args.bundle}/configs/inference.json not found")

    from mgcc.data.phantom import make_phantom_dataset

    with tempfile.TemporaryDirectory(prefix="mgcc_bench_deploy_") as tmp:
        tmp = Path(tmp)
        raw = make_phantom_dataset(tmp / "raw", n=args.n, size=args.size, seed=args.seed)
        images = tmp / "images"
        images.mkdir()
        for src in sorted(p for p in Path(raw).rglob("*.png") if "_mask" not in p.name)[: args.n]:
            shutil.copy(
                src, images / f"{src.parent.name}_{src.stem.replace(' ', '_').replace('(', '').replace(')', '')}.png"
            )
        files = sorted(images.glob("*.png"))
        one = tmp / "one"
        one.mkdir()
        shutil.copy(files[0], one / files[0].name)

        source = tmp / args.bundle.name
        shutil.copytree(
            args.bundle, source, ignore=shutil.ignore_patterns("eval", "logs", "runs", "__pycache__", "*.ts", "*.onnx")
        )
        (source / "models").mkdir(exist_ok=True)
        config_path = source / "configs" / "inference.json"
        config = json.loads(config_path.read_text())
        if args.width is not None:
            config["base_channels"] = args.width
            config_path.write_text(json.dumps(config, indent=4))
        trained = (source / "models" / "model.pt").is_file() and args.width is None
        if not trained:
            subprocess.run([sys.executable, "-c", SEED_WEIGHTS], cwd=source, check=True, capture_output=True)

        result = {
            "what": "MONAI Deploy app (apps/deploy), MGCC segmentation bundle, phantom PNG folder",
            "images": len(files),
            "image_size": [args.size, args.size],
            "spatial_size": config.get("spatial_size"),
            "base_channels": config.get("base_channels"),
            "weights": "bundle models/model.pt" if trained else "seeded random (timing only)",
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": os.getloadavg(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "runs": {},
        }
        for form in args.model_forms:  # one after another, each in its own copy of the bundle
            bundle = tmp / form / source.name
            shutil.copytree(source, bundle)
            model = bundle
            if form in EXPORTS:
                model = export_model(bundle, form, config["spatial_size"])
            start_run = timed([deploy_py, APP, "-i", one, "-o", tmp / form / "out1", "-m", model])
            full_run = timed([deploy_py, APP, "-i", images, "-o", tmp / form / "outN", "-m", model])
            manifest = json.loads((tmp / form / "outN" / "predictions.json").read_text())
            if len(manifest["results"]) != len(files):
                raise SystemExit(f"error: the app wrote {len(manifest['results'])} masks for {len(files)} images")
            per_image = {
                phase: round(statistics.mean(r["seconds"][phase] for r in manifest["results"]), 4)
                for phase in ("read", "inference", "write")
            }
            per_image["rest"] = round(full_run["wall_s"] / len(files) - sum(per_image.values()), 4)
            result["runs"][form] = {
                "model": manifest["model"].replace(str(tmp), "<tmp>"),
                "one_image_run": start_run,
                "n_image_run": full_run,
                "images_per_second": round(len(files) / full_run["wall_s"], 3),
                "steady_state_images_per_second": (  # none when start-up noise exceeds the N-image work
                    round((len(files) - 1) / (full_run["wall_s"] - start_run["wall_s"]), 3)
                    if full_run["wall_s"] > start_run["wall_s"]
                    else None
                ),
                "seconds_per_image": per_image,
                "peak_rss_mib": full_run["peak_rss_mib"],
                "lesion_pixel_fraction": round(
                    sum(r["lesion_pixels"] for r in manifest["results"]) / (len(files) * args.size * args.size), 4
                ),
            }
            print(form, json.dumps(result["runs"][form]), flush=True)
        result["machine"]["loadavg_after"] = os.getloadavg()
        if args.compare_bundle:
            bundle_run = timed(
                [
                    sys.executable,
                    "-m",
                    "monai.bundle",
                    "run",
                    "--config_file",
                    "configs/inference.json",
                    "--input_dir",
                    images,
                    "--output_dir",
                    tmp / "bundle_out",
                ],
                cwd=source,
            )
            result["bundle_run"] = {**bundle_run, "images_per_second": round(len(files) / bundle_run["wall_s"], 3)}
        versions = subprocess.run(
            [
                deploy_py,
                "-c",
                "import warnings; warnings.simplefilter('ignore'); import torch, "
                "monai, monai.deploy, holoscan; print(torch.__version__, monai.__version__, "
                "monai.deploy.__version__, holoscan.__version__, torch.cuda.is_available())",
            ],
            capture_output=True,
            text=True,
        ).stdout.split()
        result["versions"] = dict(
            zip(["torch", "monai", "monai_deploy_app_sdk", "holoscan", "cuda"], versions, strict=False)
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
