"""Speed and memory of the LDM bundle: autoencoder (VAE-GAN) and latent diffusion training iterations/s, DDIM sampling
images/s, peak memory, at the CPU-quick and the paper-scale (GPU) settings.

The networks, trainer, batch preparation and sampler are the bundle's own (built from its configs with the preset's
overrides); inputs are random tensors of the preset's size, so no data or checkpoint is needed.

    python scripts/benchmark_generation.py --out bench/generation --presets quick full --device auto

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from mgcc.bundles import import_bundle_scripts, importable_as_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_ldm_generation"

#: overrides of the bundle configs, each a preset's generator (one place: configs/<preset>.json): "quick" the CPU
#: generator 1.x of busi-cpu, "full" the paper-scale GPU setting of busi-gpu
PRESETS = {
    name: json.loads((Path(__file__).resolve().parents[1] / "configs" / f"{preset}.json").read_text())["ldm"]["common"]
    for name, preset in (("quick", "busi-cpu"), ("full", "busi-gpu"))
}


def build(preset: str, device: torch.device, class_conditional: bool):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(
        [str(BUNDLE / "configs" / "train_autoencoder.json"), str(BUNDLE / "configs" / "train_diffusion.json")]
    )
    parser.update({**PRESETS[preset], "class_conditional": class_conditional, "device": f"$torch.device('{device}')"})
    get = parser.get_parsed_content
    keys = ("autoencoder_def", "discriminator_def", "network_def", "noise_scheduler", "adv_loss", "latent_channels")
    with importable_as_scripts(BUNDLE):  # the configs import the bundle's package as `scripts`
        parts = {key: get(key) for key in keys}
    return parts | {
        "spatial_size": parser["spatial_size"],
        "ae_channels": parser["ae_channels"],
        "class_names": parser["class_names"],
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark, KiB on Linux


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def loader(shape, batch_size: int, batches: int, class_names):
    data = [
        {
            "image": torch.rand(batch_size, *shape),
            "class": [class_names[i % len(class_names)] for i in range(batch_size)],
        }
        for _ in range(batches)
    ]
    return data


def time_engine(engine, device, warmup_iterations: int) -> float:
    """Iterations/s of an ignite engine, the first ``warmup_iterations`` not counted."""
    from ignite.engine import Events

    marks = {}

    @engine.on(Events.ITERATION_COMPLETED)
    def _mark(e):
        if e.state.iteration == warmup_iterations:
            sync(device)
            marks["start"] = time.perf_counter()

    engine.run()
    sync(device)
    return (engine.state.iteration - warmup_iterations) / (time.perf_counter() - marks["start"])


def bench_preset(preset: str, device: torch.device, batch_size: int, iterations: int, sample_batch: int, steps: int):
    scripts = import_bundle_scripts(BUNDLE)
    from monai.engines import SupervisedTrainer
    from monai.inferers import DiffusionInferer, LatentDiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    parts = build(preset, device, class_conditional=False)
    shape = [1, *parts["spatial_size"]]
    warmup = 2
    result = {"preset": preset, "overrides": PRESETS[preset], "batch_size": batch_size}

    autoencoder = parts["autoencoder_def"].to(device)
    discriminator = parts["discriminator_def"].to(device)
    reset_peak(device)
    trainer = scripts.trainer.VaeGanTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader(shape, batch_size, iterations + warmup, parts["class_names"]),
        g_network=autoencoder,
        g_optimizer=torch.optim.Adam(autoencoder.parameters(), 1e-4),
        d_network=discriminator,
        d_optimizer=torch.optim.Adam(discriminator.parameters(), 5e-4),
        adv_loss_function=parts["adv_loss"],
        adv_warmup_epochs=0,
    )
    result["autoencoder_train_it_per_s"] = time_engine(trainer, device, warmup)
    result["autoencoder_train_peak_mib"] = peak_memory_mib(device)

    autoencoder.eval().requires_grad_(False)
    diffusion = parts["network_def"].to(device)
    images = [{"image": torch.rand(*shape)} for _ in range(batch_size)]
    latents = torch.utils.data.default_collate(scripts.diffusion.encode_latents(autoencoder, images, device))
    reset_peak(device)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[latents] * (iterations + warmup),  # latents are encoded once, as the bundle trains
        network=diffusion,
        optimizer=torch.optim.Adam(diffusion.parameters(), 1e-4),
        loss_function=torch.nn.MSELoss(),
        inferer=DiffusionInferer(parts["noise_scheduler"]),
        prepare_batch=scripts.diffusion.LatentDiffusionPrepareBatch(
            scripts.diffusion.ScaleFactor(parts["latent_channels"]), parts["noise_scheduler"].num_train_timesteps
        ),
        decollate=False,
    )
    result["diffusion_train_it_per_s"] = time_engine(trainer, device, warmup)
    result["diffusion_train_peak_mib"] = peak_memory_mib(device)

    diffusion.eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False
    )
    sampler = scripts.sampler.LatentSamplingInferer(
        LatentDiffusionInferer(scheduler, scale_factor=1.0),
        autoencoder,
        scripts.diffusion.ScaleFactor(parts["latent_channels"]),
        steps,
    )
    down = 2 ** (len(parts["ae_channels"]) - 1)
    noise = torch.randn(
        sample_batch, parts["latent_channels"], *[s // down for s in parts["spatial_size"]], device=device
    )
    reset_peak(device)
    with torch.no_grad():
        sampler(noise[:1], diffusion)  # warm-up
        sync(device)
        start = time.perf_counter()
        images = sampler(noise, diffusion)
        sync(device)
    elapsed = time.perf_counter() - start
    result.update(
        {
            "sampling_ddim_steps": steps,
            "sampling_batch": sample_batch,
            "sampled_images_per_s": sample_batch / elapsed,
            "sampling_peak_mib": peak_memory_mib(device),
            "sample_shape": list(images.shape[1:]),
        }
    )
    return result


def markdown(report: dict) -> str:
    lines = [
        f"# LDM bundle benchmark ({report['device']})",
        "",
        f"torch {report['torch']}, {report['platform']}, {report['threads']} CPU threads. Random inputs; "
        f"training: batch {report['batch_size']}, {report['iterations']} timed iterations after 2 warm-up ones; "
        f"sampling: DDIM {report['steps']} steps, batch {report['sample_batch']}. Peak memory: "
        + ("CUDA max allocated." if report["device"].startswith("cuda") else "process max RSS (cumulative)."),
        "",
        "| preset | size | AE train it/s | AE peak MiB | LDM train it/s | LDM peak MiB | DDIM images/s "
        "| sampling peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['preset']} | {r['sample_shape'][1]}x{r['sample_shape'][2]} | "
            f"{r['autoencoder_train_it_per_s']:.2f} | {r['autoencoder_train_peak_mib']:.0f} | "
            f"{r['diffusion_train_it_per_s']:.2f} | {r['diffusion_train_peak_mib']:.0f} | "
            f"{r['sampled_images_per_s']:.3f} | {r['sampling_peak_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output path without extension: writes <out>.json and <out>.md")
    parser.add_argument("--presets", nargs="+", default=["quick"], choices=sorted(PRESETS))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10, help="timed training iterations per stage")
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(0)
    report = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "iterations": args.iterations,
        "sample_batch": args.sample_batch,
        "steps": args.steps,
        "results": [],
    }
    for preset in args.presets:
        print(f"benchmarking preset '{preset}' on {device} ...", flush=True)
        report["results"].append(
            bench_preset(preset, device, args.batch_size, args.iterations, args.sample_batch, args.steps)
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
