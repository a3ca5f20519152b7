"""MONAI Label integration: a real `monailabel start_server` on loopback serving the MGCC bundle.

The MONAI Label environment is created (or found up to date) by `apps/monailabel/setup_env.sh`. A copy of the
bundle is trained briefly on phantom data (never the repository's bundle), served from a temp app folder by
the launcher (`src/mgcc/monailabel/launcher.py`), and exercised over HTTP with MONAI Label's own client
(`src/mgcc/monailabel/client.py` in the label environment): /info, /infer (datastore image and uploads), bad inputs,
PUT /datastore/label (PNG and Slicer-style one-slice NIfTI), scoring and active learning, /train, and a
100-request load test.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc.monailabel.launcher import (
    DEFAULT_BUNDLE,
    LabelError,
    free_port,
    label_client,
    make_studies,
    prepare_app,
    server_command,
    server_env,
    setup_environment,
    wait_for_server,
)

SIZE = 64
#: Small CPU configuration of the bundle (checkpoint and served copy must agree on the network width).
SMALL = {"base_channels": 8, "spatial_size": [SIZE, SIZE], "num_workers": 0}
#: What /train through the server runs per epoch: a few iterations, so the test stays short.
SERVED_TRAIN = {"val_interval": 4, "labeled_batch_size": 2, "unlabeled_batch_size": 2}
#: The bundle under test (another checkout's bundle can be tested with MGCC_LABEL_BUNDLE=<folder>).
BUNDLE = Path(os.environ.get("MGCC_LABEL_BUNDLE", DEFAULT_BUNDLE)).resolve()
MODEL = BUNDLE.name
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NETWORK_ERRORS = (
    "No matching distribution",
    "Could not find a version",
    "Failed to establish a new connection",
    "Network is unreachable",
    "Temporary failure in name resolution",
)


def _threads_env() -> dict[str, str]:
    # 2 shared cores: one intra-op thread per process avoids OpenMP oversubscription (10x slower here).
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def label_env() -> Path:
    try:
        return setup_environment(quiet=True)
    except LabelError as e:
        if any(m in str(e) for m in NETWORK_ERRORS):
            pytest.skip(f"MONAI Label environment cannot be created here (package registry unreachable): {e}")
        raise


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> Path:
    """A copy of the MGCC bundle with `models/model.pt` from a short training run on phantom data."""
    if not (BUNDLE / "configs" / "train.json").is_file():
        pytest.fail(f"bundle not found: {BUNDLE}")
    from mgcc.data.phantom import make_phantom_dataset
    from mgcc.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("label_bundle")
    raw = make_phantom_dataset(root / "raw", n=48, size=SIZE, seed=0)
    prepared = root / "prepared"
    prepare_dataset(raw, prepared, labeled_fraction=0.5, seed=0)
    bundle = root / MODEL
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("__pycache__", "eval", "logs", "*.pt"))
    overrides = {**SMALL, "max_iterations": 80, "val_interval": 40, "show_progress": False}
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/train.json",
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(prepared),
    ]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value)]
    result = subprocess.run(
        cmd, cwd=bundle, env={**os.environ, **_threads_env()}, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (bundle / "models" / "model.pt").is_file()
    for extra in (bundle / "models").glob("checkpoint_*.pt"):
        extra.unlink()
    # the ONNX export, as the bundle's README makes it: the app runs it on CPU until training writes newer weights
    export = [
        sys.executable,
        "-m",
        "monai.bundle",
        "onnx_export",
        "network_def",
        "--filepath",
        "models/model.onnx",
        "--ckpt_file",
        "models/model.pt",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--use_trace",
        "True",
        "--input_shape",
        json.dumps([1, 1, SIZE, SIZE]),
        "--converter_kwargs",
        "{'dynamo': False}",
    ]
    for key in ("base_channels", "spatial_size"):
        export += [f"--{key}", json.dumps(SMALL[key])]
    result = subprocess.run(export, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return bundle


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    # seed 1: images the checkpoint never saw (it trained on seed 0)
    return make_studies(tmp_path_factory.mktemp("studies"), n=24, size=SIZE, seed=1, labeled=8)


@contextlib.contextmanager
def running_server(app: Path, studies: Path, name: str, log: Path):
    """A MONAI Label server on loopback serving `name` from `app`; yields (url, process, /info)."""
    url = f"http://127.0.0.1:{free_port()}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            server_command(app, studies, name, port=int(url.rsplit(":", 1)[1])),
            cwd=app,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**server_env(), **_threads_env()},
            start_new_session=True,
        )
    try:
        started = time.monotonic()
        info = wait_for_server(url, proc, timeout=240, log=log)
        print(f"MONAI Label server up in {time.monotonic() - started:.1f} s")
        yield url, proc, info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its training subprocesses, nothing else
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def server(label_env, trained_bundle, studies, tmp_path_factory):
    work = tmp_path_factory.mktemp("label_work")
    app, name = prepare_app(work, trained_bundle, studies, overrides={**SMALL, **SERVED_TRAIN})
    assert name == MODEL
    log = work / "server.log"
    with running_server(app, studies, name, log) as (url, proc, info):
        yield {"url": url, "app": app, "model_dir": app / "model" / name, "info": info, "proc": proc, "log": log}


@pytest.fixture(scope="module")
def client(server):
    """`client("infer", MODEL, "--image", ID, "--out", FILE)` -> the answer of `client.py` (MONAILabelClient)."""
    return functools.partial(label_client, server["url"])


def _png(path: str | Path) -> np.ndarray:
    assert Path(path).read_bytes()[:8] == PNG_MAGIC, Path(path).read_bytes()[:200]
    return np.asarray(Image.open(path))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _unlabeled_lesion_images(studies: Path) -> list[str]:
    labeled = {p.name.split(".")[0] for p in (studies / "labels" / "final").iterdir()}
    return sorted(p.stem for p in studies.glob("*.png") if p.stem not in labeled and not p.stem.startswith("normal"))


def _truth(studies: Path, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(studies / "phantom_masks" / f"{image_id}.png")) > 0


@pytest.mark.integration
def test_info_lists_2d_segmentation_model(server):
    info = server["info"]
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["dimension"] == 2
    assert model["labels"] == {"lesion": 1}
    assert MODEL in info["trainers"]
    assert "sam_2d" not in info["models"]  # offline: SAM2 disabled
    assert info["datastore"]["total"] == 24 and info["datastore"]["completed"] == 8


@pytest.mark.integration
def test_infer_datastore_image(client, server, studies, tmp_path):
    dices = []
    for image_id in _unlabeled_lesion_images(studies)[:4]:
        r = client("infer", MODEL, "--image", image_id, "--out", tmp_path / f"{image_id}.png")
        assert r["status"] == 200, r
        mask = _png(r["answer"]["out"])
        truth = _truth(studies, image_id)
        assert mask.shape == truth.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        dices.append(_dice(mask, truth))
    print(f"Dice of /infer on unseen datastore images: {[round(d, 3) for d in dices]}")
    assert np.mean(dices) >= 0.5, dices  # the lesion is found where the phantom put it
    assert "ONNX Runtime runs" in server["log"].read_text()  # the bundle's export, not the checkpoint (CPU)


@pytest.mark.integration
def test_infer_uploaded_png_keeps_size_and_orientation(client, studies, tmp_path):
    image_id = _unlabeled_lesion_images(studies)[0]
    image = np.asarray(Image.open(studies / f"{image_id}.png"))
    truth = _truth(studies, image_id)
    crop = (slice(0, SIZE), slice(4, SIZE - 12))  # non-square (64 rows x 48 columns): catches a transposed mask
    upload = tmp_path / "upload scan.png"
    Image.fromarray(image[crop]).save(upload)
    r = client("infer", MODEL, "--file", upload, "--out", tmp_path / "mask.png")
    assert r["status"] == 200, r
    mask = _png(r["answer"]["out"])
    assert mask.shape == image[crop].shape
    dice = _dice(mask, truth[crop])
    print(f"Dice of /infer on an uploaded 48x64 PNG: {dice:.3f}")
    assert dice >= 0.4


@pytest.mark.integration
def test_bad_inputs_get_4xx_and_server_keeps_serving(client, server, studies, tmp_path):
    import nibabel as nib

    good = studies / f"{_unlabeled_lesion_images(studies)[0]}.png"
    files = {
        "notes.txt": b"patient notes, not an image\n",
        "fake.png": b"this is not a PNG",
        "truncated.png": good.read_bytes()[: good.stat().st_size // 2],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((SIZE, SIZE, 8)).astype(np.float32), np.eye(4)),
        tmp_path / "volume.nii.gz",
    )
    rgba = np.dstack([np.asarray(Image.open(good))] * 3 + [np.full((SIZE, SIZE), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray((np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 16).astype(np.uint16)).save(tmp_path / "sixteen.png")
    cases = {
        "non-image upload": "notes.txt",
        "non-image named .png": "fake.png",
        "truncated PNG": "truncated.png",
        "3D volume": "volume.nii.gz",
    }
    out = tmp_path / "mask.png"
    for name in ("rgba.png", "sixteen.png"):  # the bundle's image contract converts them: segmented, as by the bundle
        r = client("infer", MODEL, "--file", tmp_path / name, "--out", out)
        assert r["status"] == 200 and out.read_bytes()[:8] == PNG_MAGIC, (name, r)
    for what, name in cases.items():
        r = client("infer", MODEL, "--file", tmp_path / name, "--out", out)
        assert 400 <= r["status"] < 500, (what, r)
        assert isinstance(r["detail"], str) and len(r["detail"]) > 20, (what, r)
        print(f"{what}: {r['status']} {r['detail']}")
        ok = client("infer", MODEL, "--file", good, "--out", out)  # the next request is served
        assert ok["status"] == 200 and out.read_bytes()[:8] == PNG_MAGIC, (what, ok)
    r = client("infer", "no_such_model", "--image", _unlabeled_lesion_images(studies)[0], "--out", out)
    assert r["status"] == 404 and "no_such_model" in r["detail"]
    assert client("infer", MODEL, "--image", "no_such_image", "--out", out)["status"] == 404
    assert server["proc"].poll() is None
    assert client("infer", MODEL, "--image", _unlabeled_lesion_images(studies)[0], "--out", out)["status"] == 200


@pytest.mark.integration
def test_save_labels_png_and_slicer_nifti(client, studies, tmp_path):
    import nibabel as nib

    png_id, nifti_id = _unlabeled_lesion_images(studies)[-2:]
    png_label = tmp_path / f"{png_id}.png"
    Image.fromarray(_truth(studies, png_id).astype(np.uint8)).save(png_label)
    # What 3D Slicer submits: the labelmap as a one-slice NIfTI, voxel (i, j, 0) = pixel (column i, row j),
    # with the LPS->RAS flip of an ITK-read PNG in its affine.
    nifti_label = tmp_path / f"{nifti_id}.nii.gz"
    slicer = _truth(studies, nifti_id).astype(np.uint8).T[:, :, None]
    nib.save(nib.Nifti1Image(slicer, np.diag([-1.0, -1.0, 1.0, 1.0])), nifti_label)

    before = _completed(client)
    for image_id, path in ((png_id, png_label), (nifti_id, nifti_label)):
        r = client("save-label", image_id, path)
        assert r["status"] == 200, r
        assert r["answer"]["label"] == image_id
    final = studies / "labels" / "final"
    assert (final / f"{png_id}.png").is_file() and (final / f"{nifti_id}.nii.gz").is_file()
    stored = np.asarray(Image.open(final / f"{png_id}.png"))
    assert np.array_equal(stored > 0, _truth(studies, png_id))
    assert _wait_for_labels(client, before + 2) == before + 2


@pytest.mark.integration
def test_active_learning_by_decoder_disagreement_picks_the_highest_scoring_unlabeled_image(
    client, server, studies, tmp_path
):
    info = client("info")["answer"]
    assert "mgcc_disagreement" in info["strategies"] and "mgcc_disagreement" in info["scoring"]
    # the scores the bundle computes itself, with the served copy's configs and weights
    scored = tmp_path / "scored"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "['configs/inference.json','configs/score.json']",
            "--input_dir",
            str(studies),
            "--output_dir",
            str(scored),
        ],
        cwd=server["model_dir"],
        capture_output=True,
        text=True,
        env={**os.environ, **_threads_env(), "PYTHONPATH": ""},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads((scored / "disagreement.json").read_text())["scores"]

    def unlabeled() -> dict[str, float]:
        labeled = {p.name.split(".")[0] for p in (studies / "labels" / "final").iterdir()}
        return {name: value for name, value in expected.items() if name not in labeled}

    deadline = time.monotonic() + 180
    r = client("score", "mgcc_disagreement")
    while r["status"] == 429 and time.monotonic() < deadline:  # the server scores once at start-up: let it finish
        time.sleep(2)
        r = client("score", "mgcc_disagreement")
    assert r["status"] == 200, r
    r = client("next-sample", "mgcc_disagreement")
    assert r["status"] == 200, r
    first = r["answer"]["id"]
    ranked = sorted(unlabeled(), key=unlabeled().get, reverse=True)
    assert first == ranked[0], (first, ranked[:3])

    label = tmp_path / f"{first}.png"
    Image.fromarray(
        _truth(studies, first).astype(np.uint8)
        if (studies / "phantom_masks" / f"{first}.png").is_file()
        else np.zeros(Image.open(studies / f"{first}.png").size[::-1], np.uint8)
    ).save(label)
    before = _completed(client)
    assert client("save-label", first, label)["status"] == 200
    _wait_for_labels(client, before + 1)
    second = client("next-sample", "mgcc_disagreement")["answer"]["id"]
    assert second != first and second == ranked[1], (second, ranked[:3])


def _completed(client) -> int:
    return client("info")["answer"]["datastore"]["completed"]


def _wait_for_labels(client, count: int, timeout: float = 30.0) -> int:
    """The datastore notices new labels through its file watcher: wait until it counts `count`."""
    deadline = time.monotonic() + timeout
    while _completed(client) < count and time.monotonic() < deadline:
        time.sleep(1)
    return _completed(client)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.integration
def test_train_rewrites_model_and_next_infer_uses_it(client, server, studies, tmp_path):
    model_pt = server["model_dir"] / "models" / "model.pt"
    before = _sha(model_pt)
    settings = {"max_epochs": 2, "val_split": 0.25, "device": "cpu", "multi_gpu": False}
    r = client("train", MODEL, "--params", json.dumps(settings))
    assert r["status"] == 200, r
    started = time.monotonic()
    task = client("train-status", "--wait", 600)["answer"]
    details = "\n".join(task.get("details", []))
    print(f"/train finished in {time.monotonic() - started:.1f} s: {task['status']}")
    assert task["status"] == "DONE", details
    assert _sha(model_pt) != before, "training through MONAI Label did not rewrite models/model.pt"
    # The training subprocess saw every label of the datastore, PNG and Slicer NIfTI alike.
    labels = list((studies / "labels" / "final").iterdir())
    assert {p.name.endswith(".nii.gz") for p in labels} == {True, False}
    log = server["log"].read_text()
    assert f"Total Records in Dataset: {len(labels)}" in log
    image_id = _unlabeled_lesion_images(studies)[0]
    r = client("infer", MODEL, "--image", image_id, "--out", tmp_path / "mask.png")
    assert r["status"] == 200, r
    mask = _png(r["answer"]["out"])
    assert mask.shape == _truth(studies, image_id).shape
    # the ONNX export is now older than the weights: the app runs the new checkpoint, not the stale export
    assert "model.onnx is older than" in server["log"].read_text()


@pytest.mark.integration
def test_load_100_requests_4_concurrent(client, server, studies, tmp_path):
    images = _unlabeled_lesion_images(studies)
    r = client("benchmark", "--model", MODEL, "--images", ",".join(images), "--n", 100, "--concurrency", 4)
    assert r["status"] == 200, r
    result = r["answer"]
    result.update({"model_config": {**SMALL, "image_size": [SIZE, SIZE]}, "threads_per_process": 1})
    out = Path(os.environ.get("MGCC_LABEL_BENCHMARK_OUT", tmp_path / "monailabel_benchmark.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_s"]
    print(f"load: {result['succeeded']}/100 ok; median {lat['median']:.3f} s, p95 {lat['p95']:.3f} s -> {out}")
    assert result["succeeded"] == 100, result["failures"]
    assert server["proc"].poll() is None


# ---------------------------------------------------------------- fast checks of the launcher (no server)
def _fake_bundle(root: Path) -> Path:
    bundle = root / "ultrasound_mgcc_segmentation"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text("{}")
    (bundle / "configs" / "inference.json").write_text(json.dumps({"base_channels": 64, "spatial_size": [256, 256]}))
    (bundle / "configs" / "train.json").write_text(
        json.dumps({"base_channels": 64, "show_progress": True, "train": {"unlabeled_dataset": {"data": "$x"}}})
    )
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    return bundle


def test_server_command_is_offline_and_loopback(tmp_path):
    cmd = server_command(tmp_path / "app", tmp_path / "studies", "m", port=8123)
    conf = {cmd[i + 1]: cmd[i + 2] for i, c in enumerate(cmd) if c == "--conf"}
    assert cmd[1] == "start_server" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert conf["zoo_source"] != "monaihosting" and conf["sam2"] == "false" and conf["models"] == "m"


def test_prepare_app_copies_bundle_and_keeps_retrained_weights(tmp_path):
    bundle = _fake_bundle(tmp_path)
    source_configs = {p.name: p.read_text() for p in (bundle / "configs").iterdir()}
    studies = tmp_path / "studies"
    studies.mkdir()
    app, name = prepare_app(tmp_path / "work", bundle, studies, overrides={"base_channels": 8})
    copy = app / "model" / name
    assert (app / "main.py").is_file() and name == bundle.name
    assert json.loads((copy / "configs" / "inference.json").read_text())["base_channels"] == 8
    train = json.loads((copy / "configs" / "train.json").read_text())
    assert train["base_channels"] == 8 and train["show_progress"] is False
    assert str(studies.resolve()) in train["train"]["unlabeled_dataset"]["data"]
    assert {p.name: p.read_text() for p in (bundle / "configs").iterdir()} == source_configs  # source untouched
    (copy / "models" / "model.pt").write_bytes(b"retrained")
    prepare_app(tmp_path / "work", bundle, studies)
    assert (copy / "models" / "model.pt").read_bytes() == b"retrained"
    prepare_app(tmp_path / "work", bundle, studies, fresh_model=True)
    assert (copy / "models" / "model.pt").read_bytes() == b"weights"


def test_prepare_app_rejects_unknown_override_and_missing_weights(tmp_path):
    bundle = _fake_bundle(tmp_path)
    with pytest.raises(LabelError, match="no_such_key"):
        prepare_app(tmp_path / "work", bundle, overrides={"no_such_key": 1})
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(LabelError, match="model.pt"):
        prepare_app(tmp_path / "work2", bundle)


def test_make_studies_layout(tmp_path):
    root = make_studies(tmp_path / "s", n=8, size=32, seed=0, labeled=3)
    images = sorted(p.stem for p in root.glob("*.png"))
    labels = sorted((root / "labels" / "final").glob("*.png"))
    assert len(images) == 8 and len(labels) == 3
    for label in labels:
        values = set(np.unique(np.asarray(Image.open(label))))
        assert values <= {0, 1} and 1 in values  # Slicer labelmap values
        assert np.asarray(Image.open(label)).shape == np.asarray(Image.open(root / label.name)).shape


def test_stopping_the_launcher_stops_what_it_started(tmp_path):
    """SIGTERM to `mgcc label serve`'s launcher reaches the server's whole process group (a server that forks a
    worker here stands in for monailabel), and the launcher returns once they are gone."""
    import textwrap

    pids = tmp_path / "pids"
    server = textwrap.dedent(f"""
        import os, subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{worker.pid}}")
        time.sleep(600)
    """)
    launcher = textwrap.dedent(f"""
        import sys
        from mgcc.monailabel.launcher import run_forwarding_signals
        sys.exit(run_forwarding_signals([sys.executable, "-c", {server!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", launcher])
    deadline = time.monotonic() + 60
    while not (pids.is_file() and len(pids.read_text().split()) == 2):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 10
        while True:  # gone (or a zombie of a finished parent, reaped shortly)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"process {pid} still runs after the launcher stopped"
            time.sleep(0.1)
