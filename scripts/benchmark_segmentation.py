#!/usr/bin/env python
"""Benchmark the MGCC segmentation bundle: training iterations/s with peak memory, inference ms/image.

Training runs the bundle's own ``SemiSupervisedTrainer`` (MGCC: 4 labeled + 4 unlabeled images, all four
decoders, BCE+Dice, consistency, SGD) on a fixed in-memory batch, in these variants of the same computation:

* ``auto``: what the bundle runs by default (``amp`` and ``channels_last`` ``"auto"``): bfloat16 autocast with
  channels-last on a CPU with bfloat16 instructions or a GPU, float32 NCHW (as ``eager``) elsewhere; the result
  says which (``precision``);
* ``eager``: NCHW tensors, every activation stored - the reference implementation's eager training loop;
* ``channels_last``: the same network and step with NHWC (``torch.channels_last``) tensors
  (bundle key ``channels_last``);
* ``checkpoint_aux``: ``channels_last`` plus activation checkpointing of the auxiliary decoders
  (``network_def#checkpoint_aux``), which trades one extra auxiliary forward pass for memory;
* ``compile``: NCHW with the training forward through ``torch.compile`` (bundle key ``compile``); the warm-up
  iteration pays the compilation, reported as ``first_iteration_seconds``;
* ``bf16``, ``bf16_channels_last``, ``bf16_compile``: the same under mixed precision (bundle key ``amp``:
  ``torch.autocast`` with bfloat16 on CPU, float16 on CUDA, through the bundle's ``AutocastInferer``);
* ``reference`` (with ``--reference DIR``): the authors' own network and training step, imported from a local
  checkout of https://github.com/FengheTan9/Multi-Level-Global-Context-Cross-Consistency (nothing of it is
  copied here). The step follows their ``train.py``: one forward of the 8-image batch, their ``BCEDiceLoss`` on
  the labeled half of all four outputs, consistency MSE of sigmoid outputs on the unlabeled half, SGD, poly LR.
  Their per-iteration training IoU (a metric, not part of the update) is left out, which favours the reference.
  Their ``dim_mult`` is our ``width / 16``; both networks have the same parameter count (checked per case).

``--rounds N`` runs the whole list of training cases N times, interleaved, and reports each case's median, so a
change in background load hits every case alike.

Inference times the main path at batch 1: ``auto`` (the bundle's default, as in training); ``eager``; ``torchscript``
(traced, frozen); ``bf16`` (eager under the
bundle's ``AutocastInferer`` with channels-last, what ``inference.json --amp true --channels_last true`` runs);
``torchscript_bf16`` (bfloat16 weights, channels-last, traced and frozen); ``reference`` (the authors' network in
eval mode, with ``--reference``); ``onnxruntime`` and ``openvino`` (the network exported with MONAI's
``convert_to_onnx``, traced, as ``python -m monai.bundle onnx_export`` does, then run by ONNX Runtime's CPU provider
or OpenVINO's CPU plugin in float32 with its latency hint; OpenVINO is not a dependency of the project: install it
to measure it).

``--flip_tta`` times every inference mode but ``reference`` with the image and its mirror in one batch of two, as
``inference.json --flip_tta true`` runs.

Every mode's ``speedup_vs_reference`` (the authors' seconds over the mode's, same size and width, same run) is in
the JSON when ``--reference`` is given.

Every case runs in its own process, so each peak-memory figure is that case's own: peak resident set size
on CPU (``ru_maxrss``, includes the interpreter and libraries), ``torch.cuda.max_memory_allocated`` on CUDA.

Usage::

    python scripts/benchmark_segmentation.py --out results/benchmark_segmentation \
        [--device cpu|cuda] [--sizes 128 256] [--widths 64 16] [--batch 8] [--iterations 3] [--threads N]
        [--reference PATH_TO_AUTHORS_CHECKOUT] [--rounds N]

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from mgcc.bundles import import_bundle_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"
TRAIN_MODES = (
    "auto",
    "eager",
    "channels_last",
    "checkpoint_aux",
    "compile",
    "bf16",
    "bf16_channels_last",
    "bf16_compile",
)
INFER_MODES = ("auto", "eager", "torchscript", "bf16", "torchscript_bf16", "onnxruntime", "openvino")
REFERENCE_URL = "https://github.com/FengheTan9/Multi-Level-Global-Context-Cross-Consistency"


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
    if case["mode"] == "auto":
        inferer = scripts.inferer.AutocastInferer("auto", device, channels_last="auto")
    else:
        channels_last = "channels_last" in case["mode"] or case["mode"] == "checkpoint_aux"
        inferer = scripts.inferer.AutocastInferer(case["mode"].startswith("bf16"), device, channels_last=channels_last)
    fmt = inferer.memory_format
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
        inferer=inferer,
        compile=case["mode"].endswith("compile"),
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
    return {
        **case,
        "seconds_per_iteration": seconds,
        "iterations_per_second": 1.0 / seconds,
        "first_iteration_seconds": times[0],
        "peak_memory_mib": peak_memory_mib(device),
        "loss": float(trainer.state.output["loss"]),
        "precision": inferer.precision,
    }


def load_reference(checkout: str, module: str):
    """A module of the authors' checkout (``src/network/MGCC.py``, ``src/utils/losses.py``), imported by path."""
    import importlib.util

    path = Path(checkout) / "src" / Path(*module.split("."))
    path = path.with_suffix(".py")
    if not path.is_file():
        raise SystemExit(f"{path} not found: --reference must be a checkout of {REFERENCE_URL}")
    spec = importlib.util.spec_from_file_location(f"mgcc_reference_{path.stem}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def reference_case(case: dict) -> dict:
    """Seconds per iteration of the authors' training step (their network and loss, their ``train.py`` logic)."""
    import torch

    device = torch.device(case["device"])
    torch.manual_seed(0)
    net = load_reference(case["reference"], "network.MGCC").MGCC(img_ch=1, dim_mult=case["width"] // 16)
    ours = load_bundle_scripts().network.MGCCNet(base_channels=case["width"])
    count = sum(p.numel() for p in net.parameters())
    if count != sum(p.numel() for p in ours.parameters()):
        raise SystemExit(
            f"width {case['width']}: reference has {count} parameters, the bundle's network "
            f"{sum(p.numel() for p in ours.parameters())}: not the same computation"
        )
    del ours
    net = net.to(device).train()
    criterion = load_reference(case["reference"], "utils.losses").BCEDiceLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    half, size = case["batch"] // 2, case["size"]
    images = torch.rand(case["batch"], 1, size, size, device=device)  # labeled half first, as their sampler does
    labels = (torch.rand(half, 1, size, size) > 0.7).float().to(device)
    n = case["warmup"] + case["iterations"]
    times: list[float] = []
    for iteration in range(n):
        synchronize(device)
        tic = time.perf_counter()
        outputs = net(images)
        supervised = sum(criterion(o[:half], labels) for o in outputs) / len(outputs)
        soft = [torch.sigmoid(o[half:]) for o in outputs]
        consistency = sum(torch.mean((soft[0] - aux) ** 2) for aux in soft[1:]) / (len(soft) - 1)
        weight = 7.0 * math.exp(-5.0 * (1.0 - min(iteration // 150, 200) / 200) ** 2)  # their ramp-up
        loss = supervised + weight * consistency
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = 0.01 * (1.0 - iteration / n) ** 0.9
        synchronize(device)
        times.append(time.perf_counter() - tic)
    timed = times[case["warmup"] :]
    seconds = sum(timed) / len(timed)
    return {
        **case,
        "seconds_per_iteration": seconds,
        "iterations_per_second": 1.0 / seconds,
        "peak_memory_mib": peak_memory_mib(device),
        "loss": float(loss),
        "parameters": count,
    }


def infer_case(case: dict) -> dict:
    """Milliseconds per image of the inference path (modes: see the module's docstring)."""
    import torch

    scripts = load_bundle_scripts()
    device = torch.device(case["device"])
    torch.manual_seed(0)
    mode = case["mode"]
    if mode == "reference":
        net = load_reference(case["reference"], "network.MGCC").MGCC(img_ch=1, dim_mult=case["width"] // 16)
    else:
        net = scripts.network.MGCCNet(base_channels=case["width"], flip_tta=case["flip_tta"])
    net = net.to(device).eval()
    x = torch.rand(1, 1, case["size"], case["size"], device=device)
    forward, precision = net, "float32"
    if mode in ("bf16", "auto"):
        choice = True if mode == "bf16" else "auto"
        inferer = scripts.inferer.AutocastInferer(choice, device, channels_last=choice)
        net = net.to(memory_format=inferer.memory_format)
        forward, precision = (lambda image: inferer(image, net)), inferer.precision  # noqa: E731
    with torch.no_grad():
        if mode == "torchscript":
            forward = torch.jit.freeze(torch.jit.trace(net, x))
        if mode == "torchscript_bf16":
            x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            net = net.to(torch.bfloat16, memory_format=torch.channels_last)
            forward = torch.jit.freeze(torch.jit.trace(net, x))
        if mode in ("onnxruntime", "openvino"):
            forward = exported(net, x, mode, torch.get_num_threads())
        for _ in range(case["warmup"]):
            forward(x)
        synchronize(device)
        tic = time.perf_counter()
        for _ in range(case["iterations"]):
            forward(x)
        synchronize(device)
    ms = 1000.0 * (time.perf_counter() - tic) / case["iterations"]
    return {**case, "ms_per_image": ms, "peak_memory_mib": peak_memory_mib(device), "precision": precision}


def exported(net, x, runtime: str, threads: int):
    """``forward(x)`` of the network exported to ONNX and run by ONNX Runtime or OpenVINO (float32)."""
    import tempfile

    from monai.networks.utils import convert_to_onnx

    path = str(Path(tempfile.mkdtemp()) / "model.onnx")
    convert_to_onnx(net, [x], input_names=["image"], output_names=["pred"], filename=path, use_trace=True, dynamo=False)
    array = x.numpy()
    if runtime == "onnxruntime":
        network = load_bundle_scripts().onnx_network.OnnxRuntimeNetwork(path, threads)
        return lambda _: network(x)  # the bundle's own module: the tensor conversions are timed too
    import openvino

    compiled = openvino.Core().compile_model(
        path,
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
    )
    request = compiled.create_infer_request()
    return lambda _: request.infer({0: array})


def run_case(case: dict, threads: int | None, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(case)]
    if threads:
        cmd += ["--threads", str(threads)]
    print(f"[benchmark] {case}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        return {**case, "error": f"exit {proc.returncode}" + (f": {last}" if last else "")}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[benchmark]   -> {result}", flush=True)
    return result


def median_of(results: list[dict]) -> dict:
    """One case over several rounds: the median time, the highest peak memory, every round's time."""
    import statistics

    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[0]
    seconds = statistics.median(r["seconds_per_iteration"] for r in ok)
    return {
        **ok[0],
        "seconds_per_iteration": seconds,
        "iterations_per_second": 1.0 / seconds,
        "peak_memory_mib": max(r["peak_memory_mib"] for r in ok),
        "rounds_seconds_per_iteration": [r["seconds_per_iteration"] for r in ok],
    }


def reference_commit(checkout: str) -> str:
    """The checkout's commit, so the result names exactly what was measured."""
    proc = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or f"{checkout} (not a git checkout)"


def add_speedups(report: dict) -> None:
    """``speedup_vs_reference`` of every case: the authors' time over the case's, same size and width."""
    for section, key in (("training", "seconds_per_iteration"), ("inference", "ms_per_image")):
        reference = {(r["size"], r["width"]): r[key] for r in report[section] if r["mode"] == "reference" and key in r}
        for r in report[section]:
            base = reference.get((r["size"], r["width"]))
            if base is not None and key in r:
                r["speedup_vs_reference"] = base / r[key]


def mode_cell(result: dict) -> str:
    """The mode, and for ``auto`` what it ran: ``auto (float32)``."""
    return f"auto ({result['precision']})" if result["mode"] == "auto" and "precision" in result else result["mode"]


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# MGCC segmentation benchmark",
        "",
        f"Device: {env['device']} ({env['device_name']}), torch {env['torch']}, MONAI {env['monai']}, "
        f"{env['threads']} CPU threads, batch {report['batch']} (half labeled, half unlabeled); CPU with bfloat16 "
        f"instructions: {'yes' if env.get('cpu_bfloat16_instructions') else 'no'}.",
        "",
        "## Training (one MGCC step: the bundle's trainer, or the authors' step for `reference`)",
        "",
        "| size | width | mode | s/iteration | iterations/s | peak memory (MiB) | speed-up vs eager "
        "| speed-up vs reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ok = {(r["size"], r["width"], r["mode"]): r for r in report["training"] if "error" not in r}

    def speedup(r: dict, mode: str) -> str:
        base = ok.get((r["size"], r["width"], mode))
        return f"{base['seconds_per_iteration'] / r['seconds_per_iteration']:.2f}x" if base else "-"

    for r in report["training"]:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['width']} | {r['mode']} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['size']} | {r['width']} | {mode_cell(r)} | {r['seconds_per_iteration']:.3f} | "
            f"{r['iterations_per_second']:.3f} | {r['peak_memory_mib']:.0f} | {speedup(r, 'eager')} | "
            f"{speedup(r, 'reference')} |"
        )
    lines += [
        "",
        "## Inference (main path, batch 1)",
        "",
        *(
            ["With flip_tta: the image and its mirror in one batch of two, their probabilities averaged.", ""]
            if any(r.get("flip_tta") for r in report["inference"])
            else []
        ),
        "| size | width | mode | ms/image | speed-up vs reference |",
        "|---|---|---|---|---|",
    ]
    for r in report["inference"]:
        value = f"failed: {r['error']}" if "error" in r else f"{r['ms_per_image']:.1f}"
        vs = f"{r['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in r else "-"
        lines.append(f"| {r['size']} | {r['width']} | {mode_cell(r)} | {value} | {vs} |")
    lines += [
        "",
        "Peak memory: peak resident set size of the case's process on CPU; `torch.cuda.max_memory_allocated` on CUDA.",
        f"Timed iterations per training case: {report['iterations']} after {report['warmup']} warm-up; "
        f"median over {report['rounds']} interleaved round(s).",
        f"Reference: {report['reference'] or 'not run (no --reference checkout given)'}.",
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
    parser.add_argument("--reference", help=f"local checkout of {REFERENCE_URL}: adds the authors' training step")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats of the training cases")
    parser.add_argument("--no_inference", action="store_true", help="skip the inference cases")
    parser.add_argument("--no_training", action="store_true", help="skip the training cases")
    parser.add_argument("--infer_modes", nargs="+", default=list(INFER_MODES), choices=INFER_MODES)
    parser.add_argument(
        "--flip_tta", action="store_true", help="time inference with the mirror averaged in (bundle key flip_tta)"
    )
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
        work = {"train": train_case, "reference": reference_case, "infer": infer_case}[case["kind"]]
        print(json.dumps(work(case)))
        return
    if not args.out:
        parser.error("--out is required")

    import monai

    device = torch.device(args.device)
    report = {
        "environment": {
            "device": args.device,
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(),
            "threads": args.threads or torch.get_num_threads(),
            "cpu_bfloat16_instructions": load_bundle_scripts().inferer.cpu_has_native_bfloat16(),
        },
        "batch": args.batch,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "reference": f"{REFERENCE_URL} at {reference_commit(args.reference)}" if args.reference else None,
        "training": [],
        "inference": [],
    }
    shapes = list(itertools.product(args.sizes, args.widths))
    modes = [] if args.no_training else (["reference"] if args.reference else []) + args.modes
    train_cases = [
        {
            "kind": "reference" if mode == "reference" else "train",
            "device": args.device,
            "size": size,
            "width": width,
            "mode": mode,
            "batch": args.batch,
            "iterations": args.iterations,
            "warmup": args.warmup,
            **({"reference": str(Path(args.reference).resolve())} if mode == "reference" else {}),
        }
        for size, width in shapes
        for mode in modes
    ]
    rounds = [[run_case(case, args.threads, args.timeout) for case in train_cases] for _ in range(args.rounds)]
    report["training"] = [median_of(list(results)) for results in zip(*rounds, strict=False)]
    if not args.no_inference:
        infer_modes = (["reference"] if args.reference else []) + args.infer_modes
        for (size, width), mode in itertools.product(shapes, infer_modes):
            case = {
                "kind": "infer",
                "device": args.device,
                "size": size,
                "width": width,
                "mode": mode,
                "iterations": args.infer_iterations,
                "warmup": 2,
                "flip_tta": args.flip_tta,
                **({"reference": str(Path(args.reference).resolve())} if mode == "reference" else {}),
            }
            report["inference"].append(run_case(case, args.threads, args.timeout))
    add_speedups(report)

    json_path, md_path = Path(f"{args.out}.json"), Path(f"{args.out}.md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(markdown(report))
    print(f"[benchmark] wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
