"""One image contract (issue 41): the same odd files (16-bit, palette, RGBA, EXIF-rotated, NIfTI, a volume, a broken
link, a truncated file) get the same network input, or the same one-line refusal, from the bundle's
`scripts/image_contract.py`, the bundle's loader and `inference_datalist`, `mgcc prepare`, the MONAI Label app's
/infer check and the Deploy app's check and reader; `python -m monai.bundle run` writes NIfTI for NIfTI, turns an
EXIF-rotated JPEG as viewers do, and stops with one line on weights of another width."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image, ImageOps

from mgcc import SEG_BUNDLE
from mgcc.bundles import import_bundle_scripts
from mgcc.data.validate import UnreadableFile, read_image

REPO = Path(__file__).resolve().parents[1]
scripts = import_bundle_scripts(SEG_BUNDLE)
contract = scripts.image_contract
GRAY = np.random.default_rng(0).integers(20, 236, (40, 56), dtype=np.uint8)
EXIF_ROTATE_90 = 6  # "rotate 90 clockwise to display"


def _exif(orientation: int) -> bytes:
    exif = Image.new("L", (1, 1)).getexif()
    exif[0x0112] = orientation
    return exif.tobytes()


def odd_images(folder: Path) -> dict[str, Path]:
    """One file per odd case, all from the same 40x56 gray image (the EXIF ones stored turned, shown upright)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(GRAY.astype(np.uint16) * 257).save(folder / "sixteen.png")
    Image.fromarray(np.dstack([GRAY] * 3)).quantize(256).save(folder / "palette.png")
    Image.fromarray(np.dstack([GRAY] * 3 + [np.full_like(GRAY, 200)])).save(folder / "rgba.png")
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(GRAY, 1)))  # EXIF 6 turns it back upright
    stored.save(folder / "exif.png", exif=_exif(EXIF_ROTATE_90))
    stored.save(folder / "exif.jpg", exif=_exif(EXIF_ROTATE_90), quality=95)
    nib.save(nib.Nifti1Image(GRAY.T[..., None], np.diag([0.2, 0.3, 1.0, 1.0])), folder / "slice.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((40, 56, 4), np.uint8), np.eye(4)), folder / "volume.nii.gz")
    os.symlink(folder / "gone" / "scan.png", folder / "broken.png")
    data = (folder / "sixteen.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return {path.name: path for path in sorted(folder.iterdir())}


def expected_pixels(path: Path) -> np.ndarray:
    """The (H, W) 8-bit image a viewer shows, by PIL alone: EXIF turned, 16-bit scaled, palette/alpha resolved."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I"):
            return np.rint(np.asarray(image, dtype=np.float64) * 255 / 65535).astype(np.uint8)
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        return np.rint(rgba[..., 0] * rgba[..., 3] / 255).astype(np.uint8)


def contract_lines(files: dict[str, Path]) -> dict[str, str | None]:
    return {name: contract.image_problem(path) for name, path in files.items()}


def test_the_contract_and_the_bundle_loader_and_prepare_agree(tmp_path):
    files = odd_images(tmp_path / "in")
    lines = contract_lines(files)
    refused = {name for name, line in lines.items() if line}
    assert refused == {"broken.png", "truncated.png", "volume.nii.gz"}, lines
    assert (
        lines["broken.png"]
        == f"{files['broken.png']}: broken link: its target {tmp_path}/in/gone/scan.png does not exist"
    )
    assert lines["truncated.png"].startswith(f"{files['truncated.png']}: unreadable or truncated image (OSError")
    assert lines["volume.nii.gz"].startswith(f"{files['volume.nii.gz']}: a 3D image of 40 x 56 x 4 voxels")
    assert all(len(line.splitlines()) == 1 for line in lines.values() if line)
    load = scripts.transforms.LoadImageGrayscaled(keys="image", image_only=True)
    for name, path in files.items():
        if name in refused:
            continue
        loaded = np.asarray(load({"image": str(path)})["image"]).squeeze()  # MONAI's 2D order (W, H)
        truth = GRAY.T if name == "slice.nii.gz" else expected_pixels(path).T
        atol = 3 if name.endswith(".jpg") else 0  # JPEG's own loss
        assert loaded.shape == (56, 40) and np.allclose(loaded, truth, atol=atol), name
        if name.endswith(".png"):  # `mgcc prepare` reads PNG: the same pixels, (H, W)
            np.testing.assert_array_equal(read_image(path)[0], loaded.T, err_msg=name)
    with pytest.raises(ValueError) as caught:  # the loader's refusal is the contract's line
        load({"image": str(files["truncated.png"])})
    assert str(caught.value) == lines["truncated.png"]
    with pytest.raises(UnreadableFile) as caught:  # and `mgcc prepare`'s reason
        read_image(files["truncated.png"])
    assert f"{files['truncated.png']}: {caught.value}" == lines["truncated.png"]
    with pytest.raises(SystemExit) as stop:  # a refused file stops inference, before the model runs
        scripts.data.inference_datalist(str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert "broken link" in str(stop.value)
    for name in ("broken.png", "truncated.png"):  # the next refused file, with the contract's line
        (tmp_path / "in" / name).unlink()
        with pytest.raises(SystemExit) as stop:
            scripts.data.inference_datalist(str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
        assert str(stop.value) == f"error: {lines['volume.nii.gz' if name == 'truncated.png' else 'truncated.png']}"


LABEL_CHECK = r"""
import json, os, sys
sys.path.insert(0, "apps/monailabel/app")
import main
contract = main.image_contract(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    try:
        main.check_image(path, contract, os.path.basename(path))
        out[os.path.basename(path)] = None
    except main.InputError as e:
        out[os.path.basename(path)] = [e.status, e.message]
print(json.dumps(out))
"""

DEPLOY_CHECK = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, "apps/deploy")
import numpy as np
from bundle_access import BundleImageReader, read_bundle_config
from errors import InputError
from sources import check_image_files
reader = BundleImageReader(read_bundle_config(Path(sys.argv[1]), ["inference"]))
out = {}
for path in map(Path, sys.argv[2:]):
    try:
        check_image_files([path])
        array, meta, wh_order = reader(path)
        out[path.name] = {"pixels": np.asarray(array).squeeze().astype(int).tolist(), "wh_order": wh_order}
    except InputError as e:
        out[path.name] = {"refused": str(e)}
print(json.dumps(out))
"""


def _run_json(python: Path, code: str, *args) -> dict:
    proc = subprocess.run(
        [str(python), "-c", code, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_monai_label_and_deploy_apply_the_bundles_contract(tmp_path):
    """Before: MONAI Label answered 415 to the 16-bit, palette and RGBA files the bundle segments, and the Deploy
    app read EXIF-rotated images as stored while the bundle... the same file, three answers."""
    files = odd_images(tmp_path / "in")
    lines = contract_lines(files)
    label_python, deploy_python = REPO / ".venv-label" / "bin" / "python", REPO / ".venv-deploy" / "bin" / "python"
    for python in (label_python, deploy_python):
        if not python.is_file():
            pytest.skip(f"{python} not set up")
    label = _run_json(label_python, LABEL_CHECK, SEG_BUNDLE, *files.values())
    for name, line in lines.items():
        if line is None:
            assert label[name] is None, (name, label[name])
        else:
            status, message = label[name]
            assert 400 <= status < 500 and message == f"{name}: {line.split(': ', 1)[1]}", (name, label[name])
    deploy = _run_json(deploy_python, DEPLOY_CHECK, SEG_BUNDLE, *files.values())  # NIfTI too
    load = scripts.transforms.LoadImageGrayscaled(keys="image", image_only=True)
    for name, path in files.items():
        if lines[name]:
            assert deploy[name]["refused"] == f"1 input file(s) cannot be segmented: {lines[name]}", (
                name,
                deploy[name],
            )
        else:
            bundle = np.asarray(load({"image": str(path)})["image"]).squeeze()
            assert deploy[name]["wh_order"] and np.array_equal(np.array(deploy[name]["pixels"]), bundle), name


def _bundle_run(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", *map(str, args)]
    return subprocess.run(
        cmd, cwd=SEG_BUNDLE, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


@pytest.mark.integration
def test_bundle_run_writes_nifti_for_nifti_and_overlays_exif_images_as_shown(tmp_path):
    """Before: `B.NII.GZ` gave `B_seg.png` (affine, spacing, header lost) and an EXIF 'rotate 90' JPEG a mask of
    the stored pixels, turned against the image a viewer shows. The shipped weights on one BUSI crop (with its
    lesion) saved three ways: PNG, NIfTI (its transpose: NIfTI's i axis is the width) with an affine and a
    description, EXIF JPEG."""
    busi = REPO.parent / "shared" / "data" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    if not busi.is_file() or not (SEG_BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("BUSI or the shipped weights are missing")
    gray = np.asarray(Image.open(busi).convert("L"))[50:250, 160:460]  # the lesion and the tissue around it
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(gray).save(folder / "a.png")
    header = nib.Nifti1Header()
    header["descrip"] = b"scan 7"
    affine = np.array([[0.1, 0, 0, 5], [0, 0.2, 0, -3], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(gray.T[..., None].astype(np.int16), affine, header=header), folder / "B.NII.GZ")
    Image.fromarray(np.ascontiguousarray(np.rot90(gray, 1))).save(
        folder / "c.jpg", exif=_exif(EXIF_ROTATE_90), quality=100
    )
    proc = _bundle_run("--input_dir", folder, "--output_dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["B_seg.nii.gz", "a_seg.png", "c_seg.png", "predictions.json"]
    png = np.asarray(Image.open(out / "a_seg.png")) > 0
    assert 0 < png.mean() < 0.9
    mask, source = nib.load(out / "B_seg.nii.gz"), nib.load(folder / "B.NII.GZ")
    assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
    assert mask.header["descrip"] == b"scan 7" and mask.header.get_zooms() == source.header.get_zooms()
    assert mask.get_data_dtype() == np.uint8 and np.array_equal(np.asanyarray(mask.dataobj)[..., 0].T > 0, png)
    turned = np.asarray(Image.open(out / "c_seg.png")) > 0
    assert turned.shape == png.shape and (turned != png).mean() < 0.01  # JPEG's loss moves a few edge pixels
    names = [r["mask"] for r in json.loads((out / "predictions.json").read_text())["results"]]
    assert names == ["B_seg.nii.gz", "a_seg.png", "c_seg.png"]


@pytest.mark.integration
def test_weights_of_another_width_stop_the_bundle_run_with_one_line(tmp_path):
    """Before: a 65-line traceback ending 'Failed to evaluate ConfigExpression', the sentence in its middle."""
    if not (SEG_BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("the shipped weights are missing")
    Image.fromarray(GRAY).save(tmp_path / "a.png")
    proc = _bundle_run("--base_channels", "32", "--input_dir", tmp_path, "--output_dir", tmp_path / "out")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: ./models/model.pt: trained with base_channels 16, the config says 32: run with --base_channels 16"
    ), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
