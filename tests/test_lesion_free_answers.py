""" "No lesion" as users get it from the shipped model: a lesion-free BUSI scan of the release test split (held out)
that the bundle's `inference.json` answers "no lesion" for gives an empty mask, recorded as such, through the Deploy
app and a MONAI Label server (`mgcc label serve`) too. How often the model leaves lesion-free scans empty is
`test_release_models.py`'s concern; here the three ways to run it must agree on one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc import SEG_BUNDLE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def normal_image(busi_release_with_normal_test_split, tmp_path_factory) -> Path:
    """The first lesion-free image of the release test split that the bundle's `inference.json` (defaults) leaves
    empty, alone in a folder under a plain name."""
    inputs = tmp_path_factory.mktemp("normal_test_images")
    for case in (f.case for f in busi_release_with_normal_test_split if f.case.label == "normal"):
        shutil.copy2(case.image, inputs / f"{case.id}.png")
    out = inputs.parent / f"{inputs.name}_bundle"
    cmd = ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    subprocess.run(
        [sys.executable, *cmd, "--input_dir", str(inputs), "--output_dir", str(out)],
        cwd=SEG_BUNDLE,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        check=True,
        timeout=300,
    )
    results = json.loads((out / "predictions.json").read_text())["results"]
    empty = next((r for r in results if not r["lesion"]), None)
    assert empty is not None, f"the bundle draws a lesion on all {len(results)} lesion-free test images"
    folder = tmp_path_factory.mktemp("normal")
    name = Path(empty["image"]).name
    shutil.copy2(inputs / name, folder / name)
    return folder / name


@pytest.mark.integration
def test_the_deploy_app_writes_an_empty_mask_for_a_lesion_free_scan(normal_image, tmp_path):
    deploy_python = Path(os.environ.get("MGCC_DEPLOY_PYTHON", REPO / ".venv-deploy" / "bin" / "python"))
    if not deploy_python.is_file():
        subprocess.run(["bash", str(REPO / "apps" / "deploy" / "setup_env.sh")], check=True, timeout=1200)
    bundle, out = tmp_path / SEG_BUNDLE.name, tmp_path / "out"
    shutil.copytree(SEG_BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "logs", "runs", "__pycache__"))
    cmd = [str(deploy_python), str(REPO / "apps" / "deploy"), "-i", str(normal_image.parent), "-o", str(out)]
    proc = subprocess.run(cmd + ["-m", str(bundle)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])  # not an AssertionError: a broken app is not the expected failure
    [record] = json.loads((out / "predictions.json").read_text())["results"]
    mask = np.asarray(Image.open(record["mask"]))
    assert mask.shape == np.asarray(Image.open(normal_image)).shape[:2]
    assert not record["lesion"] and not mask.any(), f"a lesion of {int((mask > 0).sum())} pixels drawn"


@pytest.mark.integration
def test_mgcc_label_serve_answers_an_empty_label_for_a_lesion_free_scan(bench, normal_image, tmp_path):
    from mgcc.monailabel.launcher import free_port, setup_environment, wait_for_server

    setup_environment(quiet=True)
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy2(normal_image, studies / normal_image.name)
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    launcher = bench.start_serve(studies, tmp_path / "serve", port, log)
    try:
        wait_for_server(url, launcher, timeout=300, log=log)
        out = tmp_path / "label.png"
        answer = bench.label_client(url, "infer", SEG_BUNDLE.name, "--file", str(normal_image), "--out", str(out))
        if answer["status"] != 200:
            raise RuntimeError(answer)
        label = np.asarray(Image.open(out))
        assert label.shape == np.asarray(Image.open(normal_image)).shape[:2]
        assert not label.any(), f"a lesion of {int((label > 0).sum())} pixels drawn"
    finally:
        if launcher.poll() is None:
            bench.kill_all(launcher, signal.SIGTERM)
