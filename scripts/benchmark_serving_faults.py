"""Serving under load and faults, on real BUSI images: MONAI Label (`mgcc label serve`) and the MONAI Deploy app.

    nice -n 10 .venv/bin/python scripts/benchmark_serving_faults.py [--parts label deploy] [--clients 8]
        [--requests 25] [--deploy-images 500] [--out docs/results/benchmarks/serving/serving_faults]

MONAI Label: `mgcc label serve` on the shipped bundle (models/model.pt; a datastore of a few BUSI studies, some
labeled) answers `--clients` concurrent clients each uploading `--requests` BUSI images to `/infer` (MONAI Label's
own client, `src/mgcc/monailabel/client.py benchmark`). Once half the requests are answered, a malformed upload
(a truncated PNG), an oversized one (more pixels than the app's MAX_PIXELS) and a decompression bomb (a small
PNG of 14000x14000 pixels) are sent: each must get a 4xx with a sentence while the load goes on. Then
`/train` starts and the server's process groups are killed (SIGKILL) the moment the training starts writing
`models/model.pt`; the server is started again the same way and must answer as before the training, from a
complete checkpoint.

Deploy: the app (apps/deploy, deploy venv) on `--deploy-images` BUSI images, one of them truncated: one mask per
readable image, the corrupt file listed in predictions.json.

"Correct" means: the mask agrees with the bundle's own inference (`python -m monai.bundle run --config_file
configs/inference.json` in the project venv, float32 checkpoint, same files) with Dice >= 0.99 (both empty
counts as agreement); how many are pixel-identical is reported too. Writes `<out>.json` and `<out>.md` and
prints the table. Scratch files go to outputs/load-benchmark/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUSI = (REPO / ".." / "shared" / "data" / "Dataset_BUSI_with_GT").resolve()
BUNDLE = REPO / "bundles" / "ultrasound_mgcc_segmentation"
SCRATCH = REPO / "outputs" / "load-benchmark"
DICE_OK = 0.99
#: what one /train epoch runs through the server: a few iterations, so the fault test stays short
SERVED_TRAIN = {"val_interval": 4, "labeled_batch_size": 2, "unlabeled_batch_size": 2, "num_workers": 0}
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

from mgcc.monailabel.launcher import (  # noqa: E402  # noqa: E402
    CLIENT,
    free_port,
    label_client,
    label_venv,
    server_env,
    setup_environment,
    wait_for_server,
)


# --------------------------------------------------------------------------------------------- facts, data
def machine_facts() -> dict:
    """CPU model, cores, whether the CPU has AVX-512 BF16, load average, OS."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return {
        "cpu_model": fields.get("Model name", "").strip(),
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in fields.get("Flags", "").split(),
        "loadavg": os.getloadavg(),
        "platform": platform.platform(),
    }


def busi_images(root: Path = BUSI) -> list[Path]:
    """Every BUSI image (not its masks), sorted."""
    if not root.is_dir():
        raise SystemExit(f"error: BUSI not found at {root}")
    return sorted(p for p in root.glob("*/*.png") if "_mask" not in p.name)


def busi_mask(image: Path) -> np.ndarray:
    """The lesion mask of a BUSI image: the union of its `<name>_mask*.png` files."""
    mask = np.zeros(Image.open(image).size[::-1], bool)
    for path in image.parent.glob(f"{image.stem}_mask*.png"):
        mask |= np.asarray(Image.open(path)) > 0
    return mask


def plain_name(image: Path) -> str:
    """`benign (12).png` -> `benign_012.png`."""
    return f"{image.parent.name}_{int(image.stem.split('(')[-1].rstrip(')')):03d}.png"


def copy_images(images: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, folder / plain_name(p))) for p in images]


def bundle_reference(images_dir: Path, work: Path) -> dict[str, np.ndarray]:
    """The shipped bundle's own masks for every image of `images_dir` (`monai.bundle run`, in a copy of it)."""
    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "logs", "runs", "__pycache__"))
    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--input_dir",
        str(images_dir),
        "--output_dir",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, env={**os.environ, **THREADS})
    if proc.returncode != 0:
        raise SystemExit(f"error: the bundle's inference failed:\n{proc.stderr[-3000:]}")
    return {p.name[: -len("_seg.png")]: np.asarray(Image.open(p)) > 0 for p in out.glob("*_seg.png")}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def agreement(masks: list[tuple[str, Path]], reference: dict[str, np.ndarray]) -> dict:
    """Each answer mask (image file name, mask file) against the bundle's own: Dice, pixel-identical, and how many
    reach DICE_OK."""
    dices, identical, shape_errors = [], 0, []
    for name, path in masks:
        got, ref = np.asarray(Image.open(path)) > 0, reference[Path(name).stem]
        if got.shape != ref.shape:
            shape_errors.append(f"{name}: {got.shape} vs {ref.shape}")
            continue
        dices.append(dice(got, ref))
        identical += int(np.array_equal(got, ref))
    return {
        "masks": len(masks),
        "identical": identical,
        "dice_at_least_0.99": sum(d >= DICE_OK for d in dices),
        "min_dice": round(min(dices), 4) if dices else None,
        "mean_dice": round(float(np.mean(dices)), 5) if dices else None,
        "shape_errors": shape_errors[:5],
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def complete_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoint torch can load in full (a file cut short fails)."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:
        return False


# ----------------------------------------------------------------------------------------- fault inputs
def write_faults(folder: Path, good: Path, bomb: bool = True) -> dict[str, Path]:
    """The bad uploads: a truncated PNG, an image over the app's MAX_PIXELS (4200x4200 noise, about 17 MB) and, with
    `bomb`, a decompression bomb (14000x14000 pixels, over twice PIL's MAX_IMAGE_PIXELS, a few hundred kB on disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    noise = np.random.default_rng(0).integers(0, 256, (4200, 4200), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "oversized_4200x4200.png")
    faults = {
        "malformed upload (truncated PNG)": folder / "truncated.png",
        "oversized upload (4200x4200, 17.6 Mpixel)": folder / "oversized_4200x4200.png",
    }
    if bomb:
        Image.new("L", (14000, 14000)).save(folder / "bomb_14000x14000.png")
        faults["decompression bomb (14000x14000 PNG, 196 Mpixel)"] = folder / "bomb_14000x14000.png"
    return faults


# ------------------------------------------------------------------------------------------- MONAI Label
def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start_serve(studies: Path, workdir: Path, port: int, log: Path) -> subprocess.Popen:
    """`mgcc label serve` on the shipped bundle, in its own process group, one intra-op thread per process."""
    cmd = [
        str(Path(sys.executable).parent / "mgcc"),
        "label",
        "serve",
        "--studies",
        str(studies),
        "--workdir",
        str(workdir),
        "--port",
        str(port),
        "--no-setup",
        "--overrides",
        json.dumps(SERVED_TRAIN),
    ]
    with open(log, "a") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **THREADS}, start_new_session=True
        )


def kill_all(launcher: subprocess.Popen, sig: int) -> None:
    """`sig` to the launcher and to the server's own process group (it starts the server in a new session)."""
    groups = {launcher.pid, *children(launcher.pid)}
    for group in groups:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass
    launcher.wait(timeout=60)


def survivors(groups: set[int]) -> list[int]:
    """Processes still alive in any of the process groups `groups`."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:
            alive.append(int(stat.parent.name))
    return alive


def make_studies(folder: Path, images: list[Path], labeled: int) -> Path:
    """A datastore of BUSI images, the first `labeled` with their masks as Slicer-style 0/1 labels."""
    final = folder / "labels" / "final"
    final.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        shutil.copy2(image, folder / plain_name(image))
        if i < labeled:
            Image.fromarray(busi_mask(image).astype(np.uint8)).save(final / plain_name(image))
    return folder


def load_with_faults(url: str, model: str, uploads: list[Path], faults: dict[str, Path], args, work: Path) -> dict:
    """The concurrent load, with the bad uploads sent one after another once half of it is answered."""
    work.mkdir(parents=True, exist_ok=True)
    listing, masks, out = work / "uploads.txt", work / "load_masks", work / "load.json"
    listing.write_text("\n".join(map(str, uploads)) + "\n")
    n = args.clients * args.requests
    cmd = [
        str(label_venv() / "bin" / "python"),
        str(CLIENT),
        "--url",
        url,
        "benchmark",
        "--model",
        model,
        "--files",
        str(listing),
        "--n",
        str(n),
        "--concurrency",
        str(args.clients),
        "--save-dir",
        str(masks),
        "--out",
        str(out),
    ]
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server_env())
    deadline = time.monotonic() + args.timeout

    def answered() -> int:
        return len(list(masks.glob("*.png"))) if masks.is_dir() else 0

    def send(what: str, path: Path) -> dict:
        before, start = answered(), time.perf_counter()
        r = label_client(
            url, "infer", model, "--file", str(path), "--out", str(work / f"{path.stem}_mask.png"), timeout=300
        )
        return {
            "fault": what,
            "file": path.name,
            "bytes": path.stat().st_size,
            "status": r["status"],
            "detail": r.get("detail", r.get("answer")),
            "seconds": round(time.perf_counter() - start, 2),
            "load_answers_meanwhile": answered() - before,
            "load_running_when_answered": load.poll() is None,
        }

    while load.poll() is None and answered() < n // 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    with ThreadPoolExecutor(max_workers=len(faults)) as pool:  # all at once, beside the load
        sent = list(pool.map(send, faults, faults.values()))
    stdout, stderr = load.communicate(timeout=max(deadline - time.monotonic(), 1))
    if not out.is_file():
        raise SystemExit(f"error: the load client failed: {stdout[-2000:]} {stderr[-2000:]}")
    return {"load": json.loads(out.read_text()), "faults": sent}


def watch_and_kill(launcher: subprocess.Popen, model_pt: Path, timeout: float) -> dict:
    """SIGKILL the launcher and the server the moment the training starts replacing `model_pt` (its file changes,
    or a temporary file for it appears); then describe what the kill left behind."""
    folder, start = model_pt.parent, time.monotonic()

    def state() -> tuple:
        st = model_pt.stat() if model_pt.exists() else None
        extra = sorted(p.name for p in folder.iterdir() if "model.pt" in p.name and p.name != model_pt.name)
        return (st.st_ino, st.st_size, st.st_mtime_ns) if st else None, extra

    baseline, trigger = state(), None
    while time.monotonic() - start < timeout and launcher.poll() is None:
        now = state()
        if now != baseline:
            trigger = now
            break
        time.sleep(0.001)
    groups = {launcher.pid, *children(launcher.pid)}
    kill_all(launcher, signal.SIGKILL)
    time.sleep(1.0)
    return {
        "killed_after_s": round(time.monotonic() - start, 2),
        "trigger": "model.pt write started" if trigger else "timeout (no write seen)",
        "state_at_trigger": {
            "model_pt": trigger[0] if trigger else None,
            "other_files": trigger[1] if trigger else None,
        },
        "left_in_models": {p.name: p.stat().st_size for p in sorted(folder.iterdir())},
        "model_pt_complete_after_kill": model_pt.is_file() and complete_checkpoint(model_pt),
        "survivors": survivors(groups),
    }


def label_part(args, uploads: list[Path], studies_images: list[Path], reference: dict, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    studies = make_studies(work / "studies", studies_images, labeled=args.labeled)
    faults = write_faults(work / "faults", uploads[0])
    workdir, log, port = work / "serve", work / "server.log", free_port()
    url, model = f"http://127.0.0.1:{port}", BUNDLE.name
    model_pt = workdir / "app" / "model" / model / "models" / "model.pt"
    launcher = start_serve(studies, workdir, port, log)
    try:
        started = time.perf_counter()
        wait_for_server(url, launcher, timeout=300, log=log)
        result = {"server_start_s": round(time.perf_counter() - started, 1)}
        result.update(load_with_faults(url, model, uploads, faults, args, work))
        detail = result["load"].pop("requests_detail")
        answers = [(Path(r["image"]).name, Path(r["mask"])) for r in detail if r.get("mask")]
        result["load"]["agreement_with_bundle"] = agreement(answers, reference)
        result["load"]["statuses"] = sorted({r["status"] for r in detail})
        before_sha = sha256(model_pt)
        before = {Path(r["image"]).name: Path(r["mask"]) for r in detail if r.get("mask")}
        r = label_client(
            url,
            "train",
            model,
            "--params",
            json.dumps({"max_epochs": 3, "val_split": 0.25, "device": "cpu", "multi_gpu": False}),
        )
        if r["status"] != 200:
            raise SystemExit(f"error: /train refused: {r}")
        kill = watch_and_kill(launcher, model_pt, timeout=args.timeout)
        launcher = start_serve(studies, workdir, port, log)
        started = time.perf_counter()
        wait_for_server(url, launcher, timeout=300, log=log)
        kill["restart_s"] = round(time.perf_counter() - started, 1)
        kill["model_pt_unchanged"] = model_pt.is_file() and sha256(model_pt) == before_sha
        checks = {}
        for name in sorted(before)[: args.after_restart]:
            out = work / "after_restart" / name
            r = label_client(url, "infer", model, "--file", str(uploads[0].parent / name), "--out", str(out))
            same = r["status"] == 200 and np.array_equal(
                np.asarray(Image.open(out)), np.asarray(Image.open(before[name]))
            )
            checks[name] = {
                "status": r["status"],
                "same_as_before_train": bool(same),
                **({"detail": r["detail"]} if r["status"] != 200 else {}),
            }
        kill["infer_after_restart"] = checks
        kill["answers_same_as_before"] = sum(c["same_as_before_train"] for c in checks.values())
        result["kill_during_train"] = kill
        return result
    finally:
        if launcher.poll() is None:
            kill_all(launcher, signal.SIGTERM)


# ------------------------------------------------------------------------------------------------ Deploy
def deploy_part(args, images: list[Path], corrupt: Path, reference: dict, work: Path) -> dict:
    """The Deploy app on `images` (with `corrupt` among them) from the shipped bundle folder."""
    deploy_py = REPO / ".venv-deploy" / "bin" / "python"
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    cmd = [
        str(deploy_py),
        str(REPO / "apps" / "deploy"),
        "-i",
        str(images[0].parent),
        "-o",
        str(out),
        "-m",
        str(work.parent / "bundle"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **THREADS}, timeout=args.timeout * 4)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "predictions.json").read_text()) if (out / "predictions.json").is_file() else {}
    masks = [(Path(r["source"]).name, Path(r["mask"])) for r in manifest.get("results", [])]
    lines = [line for line in proc.stderr.splitlines() if corrupt.name in line]
    return {
        "inputs": len(images),
        "corrupt_file": corrupt.name,
        "exit_code": proc.returncode,
        "status": manifest.get("status"),
        "masks": len(list((out / "masks").glob("*.png"))) if out.is_dir() else 0,
        "skipped": [{"source": Path(s["source"]).name, "reason": s["reason"]} for s in manifest.get("skipped", [])],
        "stderr_lines_naming_the_corrupt_file": lines[:3],
        "wall_s": round(wall, 1),
        "images_per_second": round(len(masks) / wall, 2),
        "agreement_with_bundle": agreement(masks, reference),
        "model": str(manifest.get("model", "")).replace(str(REPO) + "/", ""),
    }


# ------------------------------------------------------------------------------------------------- report
def table(result: dict) -> str:
    rows = ["| check | result |", "|---|---|"]
    label = result.get("label")
    if label:
        load, agree = label["load"], label["load"]["agreement_with_bundle"]
        rows.append(
            f"| MONAI Label `/infer`: {load['concurrency']} clients x {load['requests'] // load['concurrency']}"
            f" BUSI uploads | {load['succeeded']}/{load['requests']} answered 200; p50 "
            f"{load['latency_s']['median']:.2f} s, p95 {load['latency_s']['p95']:.2f} s, "
            f"{load['throughput_rps']:.2f} req/s; vs the bundle's own masks: {agree['dice_at_least_0.99']}/"
            f"{agree['masks']} Dice >= 0.99 ({agree['identical']} pixel-identical, min Dice "
            f"{agree['min_dice']}) |"
        )
        for fault in label["faults"]:
            running = "still running" if fault["load_running_when_answered"] else "finished"
            rows.append(
                f'| {fault["fault"]}, sent at half load | {fault["status"]} "{fault["detail"]}" in '
                f"{fault['seconds']} s; {fault['load_answers_meanwhile']} load answers served meanwhile, load "
                f"{running} when it was answered |"
            )
        kill = label["kill_during_train"]
        rows.append(
            f"| SIGKILL when `/train` starts writing `model.pt`, then `mgcc label serve` again | "
            f"{kill['trigger']} after {kill['killed_after_s']} s; model.pt complete after the kill: "
            f"{kill['model_pt_complete_after_kill']}, unchanged: {kill['model_pt_unchanged']}; after restart "
            f"({kill['restart_s']} s) {kill['answers_same_as_before']}/{len(kill['infer_after_restart'])} "
            f"answers identical to before `/train` |"
        )
    deploy = result.get("deploy")
    if deploy:
        agree = deploy["agreement_with_bundle"]
        listed = [s for s in deploy["skipped"] if s["source"] == deploy["corrupt_file"]]
        rows.append(
            f"| Deploy app: {deploy['inputs']} BUSI images, 1 truncated | exit {deploy['exit_code']}, "
            f"{deploy['masks']} masks, corrupt file listed: {bool(listed)} "
            f'("{listed[0]["reason"] if listed else ""}"); {deploy["images_per_second"]} images/s '
            f"({deploy['wall_s']} s with start-up); "
            f"vs the bundle's own masks: {agree['dice_at_least_0.99']}/{agree['masks']} Dice >= 0.99 "
            f"({agree['identical']} pixel-identical, min Dice {agree['min_dice']}) |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", choices=["label", "deploy"], default=["label", "deploy"])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="/infer requests per client")
    ap.add_argument("--uploads", type=int, default=40, help="distinct BUSI images the clients upload")
    ap.add_argument("--labeled", type=int, default=6, help="labeled BUSI studies in the datastore for /train")
    ap.add_argument("--after-restart", type=int, default=8, help="/infer checks after the restart")
    ap.add_argument("--deploy-images", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for the load and for the training to write")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "benchmarks" / "serving" / "serving_faults")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    every = busi_images()
    picked = [every[i] for i in rng.permutation(len(every))]
    lesion = [p for p in picked if p.parent.name != "normal"]
    n_images = max(args.deploy_images if "deploy" in args.parts else 0, args.uploads)
    chosen = picked[:n_images]
    corrupt_source = chosen[-1] if "deploy" in args.parts else None
    SCRATCH.mkdir(parents=True, exist_ok=True)
    images_dir = SCRATCH / "images"
    shutil.rmtree(images_dir, ignore_errors=True)
    copies = copy_images(chosen, images_dir)
    corrupt = copies[-1] if corrupt_source else None
    result = {
        "what": "serving under load and faults, shipped segmentation bundle, BUSI images (Al-Dhabyani et al. 2020)",
        "machine": machine_facts(),
        "bundle": str(BUNDLE.relative_to(REPO)),
        "model_pt_sha256": sha256(BUNDLE / "models" / "model.pt"),
        "correct_means": f"Dice >= {DICE_OK} "
        "against `python -m monai.bundle run --config_file configs/inference.json` on the same file",
        "command": " ".join(
            ["nice -n 10 .venv/bin/python scripts/benchmark_serving_faults.py", *(argv or sys.argv[1:])]
        ).strip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if corrupt:
        data = corrupt.read_bytes()
        corrupt.unlink()  # the reference is the bundle's output on the readable files
    started = time.perf_counter()
    reference = bundle_reference(images_dir, SCRATCH)
    result["reference_s"] = round(time.perf_counter() - started, 1)
    if corrupt:
        corrupt.write_bytes(data[: len(data) // 2])
    if "label" in args.parts:
        setup_environment(quiet=True)
        uploads = copies[: args.uploads]
        studies = [p for p in lesion if p not in chosen][: args.labeled + 2]
        result["label"] = label_part(args, uploads, studies, reference, SCRATCH / "label")
        print(json.dumps(result["label"], indent=1, default=str)[:3000], flush=True)
    if "deploy" in args.parts:
        result["deploy"] = deploy_part(args, copies, corrupt, reference, SCRATCH / "deploy")
    result["machine"]["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = table(result)
    machine = result["machine"]
    args.out.with_suffix(".md").write_text(
        f"# Serving under load and faults\n\n{machine['cpu_model']}, {machine['cores']} cores, avx512_bf16: "
        f"{machine['avx512_bf16']}, load average {machine['loadavg'][0]:.1f} at the start (a training shared the "
        f"machine). `{result['command']}`, {result['date']}.\n\n{md}"
    )
    print(md)


if __name__ == "__main__":
    main()
