"""Latency of MONAI Label `/infer` serving the MGCC segmentation bundle, per model form, in one run; writes JSON.

    .venv/bin/python scripts/benchmark_monailabel.py [--width 64] [--size 256] [--image-size 512] [--n 20]
        [--concurrency 1] [--threads 2] [--forms checkpoint onnx] [--out outputs/benchmark_monailabel.json]

For each form, one after another: a copy of the bundle at `--width`/`--size` with seeded weights (timing does
not depend on their values), served by a fresh MONAI Label server (`apps/monailabel`, the label environment)
on phantom studies of `--image-size` pixels; then `src/mgcc/monailabel/client.py benchmark` sends `--n` `/infer`
requests. `checkpoint`: `models/model.pt` only (MONAI Label's `BundleInferTask` path); `onnx`: plus
`models/model.onnx` from `python -m monai.bundle onnx_export`, which the app runs on CPU. The server gets
`--threads` intra-op threads (`OMP_NUM_THREADS`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from benchmark_deploy import EXPORTS, SEED_WEIGHTS, export_model  # noqa: E402 (beside this script, on sys.path)

from mgcc.monailabel.launcher import (  # noqa: E402
    free_port,
    label_client,
    make_studies,
    prepare_app,
    server_command,
    server_env,
    setup_environment,
    wait_for_server,
)


def serve_and_measure(app: Path, studies: Path, name: str, args: argparse.Namespace, log: Path) -> dict:
    """Start a server on `app`, run the client's benchmark against it, stop the server."""
    port = free_port()
    env = {**server_env(), "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            server_command(app, studies, name, port=port),
            cwd=app,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        wait_for_server(url, proc, timeout=300, log=log)
        start_up = time.perf_counter() - started
        answer = label_client(
            url, "benchmark", "--model", name, "--n", args.n, "--concurrency", args.concurrency, timeout=3600
        )
        if answer.get("status") != 200:
            raise SystemExit(f"error: benchmark failed: {answer}")
        result = answer["answer"]
        result["server_start_s"] = round(start_up, 1)
        result["onnx_runtime_used"] = "ONNX Runtime runs" in log.read_text()
        return result
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "bundles" / "ultrasound_mgcc_segmentation")
    ap.add_argument("--width", type=int, default=64, help="base_channels")
    ap.add_argument("--size", type=int, default=256, help="network input size (spatial_size, square)")
    ap.add_argument("--image-size", type=int, default=512, help="phantom image size in the studies folder")
    ap.add_argument("--n", type=int, default=20, help="/infer requests per form")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--forms", nargs="+", choices=["checkpoint", "onnx"], default=["checkpoint", "onnx"])
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmark_monailabel.json")
    args = ap.parse_args(argv)

    setup_environment(quiet=True)
    settings = {"base_channels": args.width, "spatial_size": [args.size, args.size]}
    result = {
        "what": "MONAI Label /infer (apps/monailabel), MGCC segmentation bundle, phantom studies",
        **settings,
        "image_size": [args.image_size, args.image_size],
        "threads": args.threads,
        "weights": "seeded random (timing only)",
        "machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "platform": platform.platform()},
        "forms": {},
    }
    with tempfile.TemporaryDirectory(prefix="mgcc_bench_label_") as tmp:
        tmp = Path(tmp)
        studies = make_studies(tmp / "studies", n=8, size=args.image_size, seed=1, labeled=0)
        source = tmp / "source" / args.bundle.name
        shutil.copytree(
            args.bundle,
            source,
            ignore=shutil.ignore_patterns("eval", "logs", "runs", "__pycache__", "*.pt", "*.ts", "*.onnx"),
        )
        (source / "models").mkdir(exist_ok=True)
        config_path = source / "configs" / "inference.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **settings}, indent=4))
        subprocess.run([sys.executable, "-c", SEED_WEIGHTS], cwd=source, check=True, capture_output=True)
        for form in args.forms:
            bundle = tmp / form / args.bundle.name
            shutil.copytree(source, bundle)
            if form in EXPORTS:
                export_model(bundle, form, settings["spatial_size"])
            app, name = prepare_app(tmp / form / "work", bundle, studies)
            measured = serve_and_measure(app, studies, name, args, tmp / form / "server.log")
            result["forms"][form] = {
                k: measured[k]
                for k in (
                    "requests",
                    "concurrency",
                    "succeeded",
                    "failed",
                    "latency_s",
                    "wall_s",
                    "throughput_rps",
                    "server_start_s",
                    "onnx_runtime_used",
                )
            }
            print(form, json.dumps(result["forms"][form]), flush=True)
    result["machine"]["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
