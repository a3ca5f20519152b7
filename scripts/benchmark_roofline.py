#!/usr/bin/env python
"""How far from the machine's limit the MGCC network runs: achieved GFLOP/s beside a plain matmul's.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls; elementwise work
is not counted, so the achieved figures are lower bounds), on the same computation that is then timed:

* ``train_step``: the MGCC training graph (all four decoders, perturbations on) forward and backward on a batch
  (half of it would be unlabeled in training; the network does the same work for both halves), with a sigmoid
  MSE stand-in for the losses (their FLOPs are negligible);
* ``inference``: the main path in eval mode at batch 1 under ``torch.no_grad``.

Beside them a square float32 matmul (and bfloat16, which shows whether this CPU has bf16 matrix units) gives the
peak a well-tuned kernel reaches on the same threads.

Usage::

    python scripts/benchmark_roofline.py --out docs/results/roofline-cpu2 --threads 2 \
        [--sizes 128 256] [--widths 16 64] [--batch 8] [--iterations 3]

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"


def timed(step, iterations: int, warmup: int = 1) -> float:
    """Median seconds of ``step()`` over ``iterations`` runs after ``warmup``."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def counted(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def matmul_case(dtype: torch.dtype, n: int, iterations: int) -> dict:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = timed(lambda: a @ b, iterations)
    return {
        "case": f"matmul {n}x{n} {str(dtype).replace('torch.', '')}",
        "gflop": 2 * n**3 / 1e9,
        "seconds": seconds,
        "gflops_per_second": 2 * n**3 / seconds / 1e9,
    }


def network_cases(size: int, width: int, batch: int, iterations: int) -> list[dict]:
    from mgcc.bundles import import_bundle_scripts

    MGCCNet = import_bundle_scripts(BUNDLE).network.MGCCNet

    torch.manual_seed(0)
    net = MGCCNet(base_channels=width)
    x = torch.rand(batch, 1, size, size)

    def train_step() -> None:
        net.zero_grad(set_to_none=True)
        outputs = net.train()(x)
        loss = sum(torch.sigmoid(o).square().mean() for o in outputs)
        loss.backward()

    one = x[:1]

    def inference() -> None:
        with torch.no_grad():
            net.eval()(one)

    cases = []
    for name, step, n in (("train_step", train_step, batch), ("inference", inference, 1)):
        flops = counted(step)
        seconds = timed(step, iterations)
        cases.append(
            {
                "case": f"{name} {size}x{size} width {width} batch {n}",
                "gflop": flops / 1e9,
                "seconds": seconds,
                "gflops_per_second": flops / seconds / 1e9,
            }
        )
    return cases


def markdown(report: dict) -> str:
    peak = report["fp32_matmul_gflops_per_second"]
    lines = [
        f"# Achieved GFLOP/s ({report['machine']['cpu']}, {report['threads']} threads, torch "
        f"{report['machine']['torch']})",
        "",
        "| case | GFLOP | seconds | GFLOP/s | share of the fp32 matmul peak |",
        "|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        lines.append(
            f"| {case['case']} | {case['gflop']:.2f} | {case['seconds']:.3f} | "
            f"{case['gflops_per_second']:.1f} | {case['gflops_per_second'] / peak:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output path without suffix: writes <out>.json and <out>.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--widths", type=int, nargs="+", default=[16])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--matmul_size", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cases = [
        matmul_case(torch.float32, args.matmul_size, args.iterations),
        matmul_case(torch.bfloat16, args.matmul_size, args.iterations),
    ]
    for size in args.sizes:
        for width in args.widths:
            cases += network_cases(size, width, args.batch, args.iterations)
            print(json.dumps(cases[-2:]), flush=True)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    report = {
        "machine": {"cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__},
        "threads": args.threads,
        "command": " ".join(sys.argv),
        "cases": cases,
        "fp32_matmul_gflops_per_second": cases[0]["gflops_per_second"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
