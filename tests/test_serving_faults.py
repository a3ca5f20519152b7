"""Faults while serving, at small scale (scripts/benchmark_serving_faults.py is the full-size run, docs/results.md):

- the bundle's checkpoint saver replaces ``model.pt`` atomically (a save that fails midway leaves the old one);
- a real `mgcc label serve` on the shipped bundle, 2 clients x 3 BUSI uploads with a malformed and an oversized
  upload sent meanwhile (each a 4xx with a sentence, the load all answered), then killed (SIGKILL) as `/train`
  starts writing `model.pt` and started again: it answers as before, from a complete checkpoint;
- the Deploy app on 10 BUSI images, one truncated: 9 masks, the corrupt file listed in predictions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc import SEG_BUNDLE
from mgcc.bundles import import_bundle_scripts

REPO = Path(__file__).resolve().parents[1]


def test_atomic_checkpoint_saver_keeps_the_old_model_when_a_save_fails(tmp_path, monkeypatch):
    import torch
    from ignite.engine import Engine, Events

    trainer = import_bundle_scripts(SEG_BUNDLE).trainer
    net = torch.nn.Linear(4, 1)
    scores = iter([0.1, 0.5, 0.3, 0.9])
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=next(scores)))
    best = trainer.AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": net},
        save_key_metric=True,
        key_metric_name="dice",
        key_metric_filename="model.pt",
    )
    periodic = trainer.AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1, epoch_level=True, n_saved=2
    )
    best.attach(engine)
    periodic.attach(engine)
    inodes = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: inodes.append((tmp_path / "model.pt").stat().st_ino))
    engine.run([0], max_epochs=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model.pt", "model_epoch=2.pt", "model_epoch=3.pt"], names  # n_saved 2, no .part
    assert inodes[0] != inodes[1] == inodes[2]  # a new best replaced the file (renamed over it), 0.3 did not
    kept = (tmp_path / "model.pt").read_bytes()

    def failing_save(obj, f, *args, **kwargs):  # the disk fills up halfway through the next best model
        f.write(kept[: len(kept) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        engine.run([0], max_epochs=4)  # epoch 4 scores 0.9: a new best
    assert (tmp_path / "model.pt").read_bytes() == kept
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.integration
def test_label_server_answers_through_bad_uploads_and_a_kill_during_train(bench, busi_root, tmp_path):
    from mgcc.monailabel.launcher import free_port, setup_environment, wait_for_server

    setup_environment(quiet=True)
    images = bench.busi_images(busi_root)
    lesion = [p for p in images if p.parent.name != "normal"]
    uploads = bench.copy_images(images[::150][:4], tmp_path / "uploads")
    studies = bench.make_studies(tmp_path / "studies", lesion[1::60][:6], labeled=4)
    faults = bench.write_faults(tmp_path / "faults", uploads[0], bomb=False)
    args = argparse.Namespace(clients=2, requests=3, timeout=300)
    workdir, log, port = tmp_path / "serve", tmp_path / "server.log", free_port()
    url, model = f"http://127.0.0.1:{port}", SEG_BUNDLE.name
    model_pt = workdir / "app" / "model" / model / "models" / "model.pt"
    launcher = bench.start_serve(studies, workdir, port, log)
    try:
        wait_for_server(url, launcher, timeout=300, log=log)
        result = bench.load_with_faults(url, model, uploads, faults, args, tmp_path / "load")
        load = result["load"]
        assert load["succeeded"] == 6 and {r["status"] for r in load["requests_detail"]} == {200}, load["failures"]
        for fault in result["faults"]:
            assert 400 <= fault["status"] < 500, fault
            assert isinstance(fault["detail"], str) and "uploaded image" in fault["detail"], fault
        before = {Path(r["image"]).name: np.asarray(Image.open(r["mask"])) for r in load["requests_detail"]}
        expected_pt = model_pt.read_bytes()
        r = bench.label_client(
            url,
            "train",
            model,
            "--params",
            json.dumps({"max_epochs": 2, "val_split": 0.25, "device": "cpu", "multi_gpu": False}),
        )
        assert r["status"] == 200, r
        kill = bench.watch_and_kill(launcher, model_pt, timeout=240)
        assert kill["trigger"] == "model.pt write started" and not kill["survivors"], kill
        assert kill["model_pt_complete_after_kill"] and model_pt.read_bytes() == expected_pt, kill
        launcher = bench.start_serve(studies, workdir, port, log)
        wait_for_server(url, launcher, timeout=300, log=log)
        for name, mask in before.items():
            out = tmp_path / "after" / name
            r = bench.label_client(url, "infer", model, "--file", str(uploads[0].parent / name), "--out", str(out))
            assert r["status"] == 200, r
            assert np.array_equal(np.asarray(Image.open(out)), mask), f"{name}: another answer after the restart"
    finally:
        if launcher.poll() is None:
            bench.kill_all(launcher, signal.SIGTERM)


@pytest.mark.integration
def test_deploy_app_segments_the_readable_images_and_lists_the_corrupt_one(bench, busi_root, tmp_path):
    deploy_python = Path(os.environ.get("MGCC_DEPLOY_PYTHON", REPO / ".venv-deploy" / "bin" / "python"))
    if not deploy_python.is_file():
        subprocess.run(["bash", str(REPO / "apps" / "deploy" / "setup_env.sh")], check=True, timeout=1200)
    copies = bench.copy_images(bench.busi_images(busi_root)[::78][:10], tmp_path / "in")
    corrupt = copies[4]
    corrupt.write_bytes(corrupt.read_bytes()[:5000])
    bundle = tmp_path / SEG_BUNDLE.name
    shutil.copytree(SEG_BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "logs", "runs", "__pycache__"))
    out = tmp_path / "out"
    cmd = [
        str(deploy_python),
        str(REPO / "apps" / "deploy"),
        "-i",
        str(tmp_path / "in"),
        "-o",
        str(out),
        "-m",
        str(bundle),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "predictions.json").read_text())
    written = sorted(p.name for p in (out / "masks").glob("*.png"))
    assert written == sorted(p.name for p in copies if p != corrupt) and manifest["status"] == "complete"
    assert len(manifest["results"]) == 9
    [skipped] = manifest["skipped"]
    assert Path(skipped["source"]).name == corrupt.name and skipped["reason"], skipped
    named = [line for line in proc.stderr.splitlines() if corrupt.name in line]
    assert len(named) == 1 and skipped["reason"] in named[0], proc.stderr[-3000:]  # one line naming the file
    for rec in manifest["results"]:
        mask = np.asarray(Image.open(rec["mask"]))
        assert mask.shape == (rec["rows"], rec["columns"]) == np.asarray(Image.open(rec["source"])).shape[:2]
