#!/usr/bin/env python
"""Benchmark the MGCC segmentation bundle: training iterations/s with peak memory, inference ms/image.

Training runs the bundle's own ``SemiSupervisedTrainer`` (MGCC: 4 labeled + 4 unlabeled images, all four
decoders, BCE+Dice, consistency, SGD) on a fixed in-memory batch, in these variants of the same computation:

* ``eager``: NCHW tensors, every activation stored - the reference implementation's eager training loop;
* ``channels_last``: the same network and step with NHWC (``torch.channels_last``) tensors
  (bundle key ``channels_last``);
* ``checkpoint_aux``: ``channels_last`` plus activation checkpointing of the auxiliary decoders
  (``network_def#checkpoint_aux``), which trades one extra auxiliary forward pass for memory.

Inference times the main path at batch 1, eager against TorchScript (traced, frozen).

Every case runs in its own process, so each peak-memory figure is that case's own: peak resident set size
on CPU (``ru_maxrss``, includes the interpreter and libraries), ``torch.cuda.max_memory_allocated`` on CUDA.

Usage::

    python scripts/benchmark_segmentation.py --out results/benchmark_segmentation \
        [--device cpu|cuda] [--sizes 128 256] [--widths 64 16] [--batch 8] [--iterations 3] [--threads N]

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from mgcc.bundles import import_bundle_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"
TRAIN_MODES = ("eager", "channels_last", "checkpoint_aux")


def load_bundle_scripts():
    """The bundle's ``scripts`` package under a private name (the other bundle has a ``scripts`` package too)."""
    return import_bundle_scripts(BUNDLE)


def peak_memory_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_case(case: dict) -> dict:
    """Seconds per MGCC training iteration of the bundle's trainer."""
    import torch
    from monai.losses import DiceCELoss

    scripts = load_bundle_scripts()
    device = torch.device(case["device"])
    torch.manual_seed(0)
    channels_last = case["mode"] != "eager"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = scripts.network.MGCCNet(base_channels=case["width"], checkpoint_aux=case["mode"] == "checkpoint_aux")
    net = net.to(device, memory_format=fmt)
    half, size = case["batch"] // 2, case["size"]
    batch = {
        "image": torch.rand(half, 1, size, size).to(device, memory_format=fmt),
        "label": (torch.rand(half, 1, size, size) > 0.7).float().to(device, memory_format=fmt),
        "unlabeled": torch.rand(case["batch"] - half, 1, size, size).to(device, memory_format=fmt),
    }
    n = case["warmup"] + case["iterations"]
    times: list[float] = []
    trainer = scripts.trainer.SemiSupervisedTrainer(
        device=device,
        max_epochs=1,
        epoch_length=n,
        train_data_loader=itertools.repeat(batch),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
        loss_function=DiceCELoss(sigmoid=True, lambda_ce=0.5, lambda_dice=1.0),
        consistency_weight=scripts.trainer.SigmoidRampUp(7.0, 100),
        channels_last=channels_last,
        decollate=False,
    )
    from ignite.engine import Events

    @trainer.on(Events.ITERATION_STARTED)
    def _start(engine):
        synchronize(device)
        engine.state.tic = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(engine):
        synchronize(device)
        times.append(time.perf_counter() - engine.state.tic)

    trainer.run()
    timed = times[case["warmup"] :]
    seconds = sum(timed) / len(timed)
    return {**case, "seconds_per_iteration": seconds, "iterations_per_second": 1.0 / seconds,
            "peak_memory_mib": peak_memory_mib(device), "loss": float(trainer.state.output["loss"])}


def infer_case(case: dict) -> dict:
    """Milliseconds per image of the inference path, eager or TorchScript."""
    import torch

    scripts = load_bundle_scripts()
    device = torch.device(case["device"])
    torch.manual_seed(0)
    net = scripts.network.MGCCNet(base_channels=case["width"]).to(device).eval()
    x = torch.rand(1, 1, case["size"], case["size"], device=device)
    with torch.no_grad():
        if case["mode"] == "torchscript":
            net = torch.jit.freeze(torch.jit.trace(net, x))
        for _ in range(case["warmup"]):
            net(x)
        synchronize(device)
        tic = time.perf_counter()
        for _ in range(case["iterations"]):
            net(x)
        synchronize(device)
    ms = 1000.0 * (time.perf_counter() - tic) / case["iterations"]
    return {**case, "ms_per_image": ms, "peak_memory_mib": peak_memory_mib(device)}


def run_case(case: dict, threads: int | None, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(case)]
    if threads:
        cmd += ["--threads", str(threads)]
    print(f"[benchmark] {case}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[benchmark]   -> {result}", flush=True)
    return result


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# MGCC segmentation benchmark",
        "",
        f"Device: {env['device']} ({env['device_name']}), torch {env['torch']}, MONAI {env['monai']}, "
        f"{env['threads']} CPU threads, batch {report['batch']} (half labeled, half unlabeled).",
        "",
        "## Training (MGCC step of the bundle's trainer)",
        "",
        "| size | width | mode | s/iteration | iterations/s | peak memory (MiB) | speed-up vs eager |",
        "|---|---|---|---|---|---|---|",
    ]
    eager = {(r["size"], r["width"]): r for r in report["training"] if r["mode"] == "eager" and "error" not in r}
    for r in report["training"]:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['width']} | {r['mode']} | failed: {r['error']} | | | |")
            continue
        base = eager.get((r["size"], r["width"]))
        speedup = f"{base['seconds_per_iteration'] / r['seconds_per_iteration']:.2f}x" if base else "-"
        lines.append(
            f"| {r['size']} | {r['width']} | {r['mode']} | {r['seconds_per_iteration']:.3f} | "
            f"{r['iterations_per_second']:.3f} | {r['peak_memory_mib']:.0f} | {speedup} |"
        )
    lines += ["", "## Inference (main path, batch 1)", "", "| size | width | mode | ms/image |", "|---|---|---|---|"]
    for r in report["inference"]:
        value = f"failed: {r['error']}" if "error" in r else f"{r['ms_per_image']:.1f}"
        lines.append(f"| {r['size']} | {r['width']} | {r['mode']} | {value} |")
    lines += [
        "",
        "Peak memory: peak resident set size of the case's process on CPU; `torch.cuda.max_memory_allocated` on CUDA.",
        f"Timed iterations per training case: {report['iterations']} after {report['warmup']} warm-up.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output path without suffix: writes <out>.json and <out>.md")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--modes", nargs="+", default=list(TRAIN_MODES), choices=TRAIN_MODES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=3, help="timed training iterations per case")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--infer_iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per case")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        case = json.loads(args.worker)
        print(json.dumps(train_case(case) if case["kind"] == "train" else infer_case(case)))
        return
    if not args.out:
        parser.error("--out is required")

    import monai

    device = torch.device(args.device)
    report = {
        "environment": {
            "device": args.device,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(),
            "threads": args.threads or torch.get_num_threads(),
        },
        "batch": args.batch,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "training": [],
        "inference": [],
    }
    for size, width in itertools.product(args.sizes, args.widths):
        for mode in args.modes:
            case = {"kind": "train", "device": args.device, "size": size, "width": width, "mode": mode,
                    "batch": args.batch, "iterations": args.iterations, "warmup": args.warmup}
            report["training"].append(run_case(case, args.threads, args.timeout))
        for mode in ("eager", "torchscript"):
            case = {"kind": "infer", "device": args.device, "size": size, "width": width, "mode": mode,
                    "iterations": args.infer_iterations, "warmup": 2}
            report["inference"].append(run_case(case, args.threads, args.timeout))

    json_path, md_path = Path(f"{args.out}.json"), Path(f"{args.out}.md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(markdown(report))
    print(f"[benchmark] wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
