"""Seconds per diffusion training iteration of the LDM bundle's UNet at the 128x128 candidates (issue 42, stage 2):
the network, scheduler and inferer built from the bundle's configs + overlays, random latents of the latent shape,
one Adam step per iteration, ``amp`` false and auto side by side (A B A B).

    OMP_NUM_THREADS=2 python scripts/experiments/ldm128/time_diffusion.py --overlays ae128/s2 ldm128/common \
        --variants default ldm128/unet_m --iterations 20 --out outputs/generator-2.0/ldm128/timing.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from mgcc import LDM_BUNDLE, REPO_ROOT
from mgcc.bundles import importable_as_scripts

EXPERIMENTS = REPO_ROOT / "scripts" / "experiments"


def build(overlays: list[str], amp: str):
    files = [LDM_BUNDLE / "configs" / "train_autoencoder.json", LDM_BUNDLE / "configs" / "train_diffusion.json"]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files + [EXPERIMENTS / f"{o}.json" for o in overlays]])
    parser.update({"amp": amp, "device": "$torch.device('cpu')"})
    with importable_as_scripts(LDM_BUNDLE):
        network = parser.get_parsed_content("network")
        scheduler = parser.get_parsed_content("noise_scheduler")
        inferer = parser.get_parsed_content("train#inferer")
        shape = [parser["batch_size"], parser["latent_channels"]] + parser.get_parsed_content("latent_size")
    return network, scheduler, inferer, shape


def seconds_per_iteration(overlays: list[str], amp: str, iterations: int) -> float:
    torch.manual_seed(0)
    network, scheduler, inferer, shape = build(overlays, amp)
    optimizer = torch.optim.Adam(network.parameters(), 1e-4)
    times = []
    for _ in range(iterations + 2):  # two warm-up iterations
        latents = torch.randn(shape)
        noise, timesteps = torch.randn(shape), torch.randint(0, scheduler.num_train_timesteps, (shape[0],))
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        prediction = inferer(latents, network, noise=noise, timesteps=timesteps)
        torch.nn.functional.mse_loss(prediction, noise).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sum(times[2:]) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overlays", nargs="+", required=True, help="overlays under scripts/experiments (no .json)")
    parser.add_argument("--variants", nargs="+", default=["default"], help="'default' or one more overlay each")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for variant in args.variants:
        overlays = args.overlays + ([] if variant == "default" else [variant])
        for repeat in range(2):
            for amp in ("false", "auto"):
                s = seconds_per_iteration(overlays, amp, args.iterations)
                rows.append({"variant": variant, "amp": amp, "repeat": repeat, "seconds_per_iteration": round(s, 3)})
                print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with importable_as_scripts(LDM_BUNDLE):
        from scripts.utils import cpu_has_native_bfloat16
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpu_native_bfloat16": cpu_has_native_bfloat16(),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
