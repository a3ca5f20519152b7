"""The MONAI Deploy application (apps/deploy) against the segmentation bundle's own inference, pixel for pixel.

Runs in two environments, as in production: the project's venv (this process) runs the bundle
(`python -m monai.bundle run`, `ckpt_export`), and the deploy venv (`apps/deploy/setup_env.sh`, created on first
use; or `MGCC_DEPLOY_PYTHON`) runs the app. Inputs are phantom images cropped to a non-square 64x48 (so a
swapped width/height cannot pass; one is square 64x64), one of them RGB, and DICOM files written from them.

The bundle is a temporary copy of bundles/ultrasound_mgcc_segmentation (or `MGCC_DEPLOY_TEST_BUNDLE`) with
`base_channels` set to 8 so that a CPU run stays short; the configs are otherwise the bundle's own. Its weights
are seeded random weights whose head bias is shifted by the median logit over the test images, so the masks
are about half lesion and spatially irregular: an untrained net predicts all-background, which would let a
broken app pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "deploy"
BUNDLE = Path(os.environ.get("MGCC_DEPLOY_TEST_BUNDLE", REPO / "bundles" / "ultrasound_mgcc_segmentation"))
TEST_WIDTH = 8
ROWS, COLS = 64, 48
TIMEOUT = 600

CALIBRATE = r"""
import glob, sys, torch
sys.path.insert(0, ".")
from monai.bundle import ConfigParser
parser = ConfigParser()
parser.read_meta("configs/metadata.json")
parser.read_config("configs/inference.json")
torch.manual_seed(0)
net = parser.get_parsed_content("network_def").eval()
pre = parser.get_parsed_content("preprocessing")
files = sorted(glob.glob(sys.argv[1] + "/*.png"))
with torch.no_grad():
    logits = torch.cat([net(pre({"image": f})["image"].as_tensor()[None]).flatten() for f in files])
shift = float(logits.median())
state = net.state_dict()
heads = [k for k in state if k.endswith("head.bias")]
assert heads, "no '*head.bias' parameter to calibrate"
for k in heads:
    state[k] = state[k] - shift
torch.save(state, "models/model.pt")
print(len(heads), shift)
"""

SEG_CHECK = r"""
import json, sys
import numpy as np
import pydicom
from PIL import Image
out = []
for f in sys.argv[2:]:
    seg = pydicom.dcmread(f)
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    mask = np.array(Image.open(sys.argv[1] + "/" + ref + ".png")) > 0
    pix = seg.pixel_array.reshape(mask.shape) if seg.pixel_array.size == mask.size else None
    out.append({"file": f, "modality": seg.Modality, "sop_class": seg.SOPClassUID, "ref": ref,
                "patient_id": seg.PatientID, "study": seg.StudyInstanceUID, "frames": int(seg.NumberOfFrames),
                "equal": bool(pix is not None and np.array_equal(pix.astype(bool), mask))})
print(json.dumps(out))
"""


def run(cmd, cwd=None, check=True, timeout=TIMEOUT):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def deploy_python() -> Path:
    if "MGCC_DEPLOY_PYTHON" in os.environ:
        return Path(os.environ["MGCC_DEPLOY_PYTHON"])
    run(["bash", APP / "setup_env.sh"], timeout=1200)
    return REPO / ".venv-deploy" / "bin" / "python"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six phantom images, 64x48 except one 64x64 (one RGB with unequal channels), and nothing else."""
    from mgcc.data.phantom import make_phantom_dataset

    raw = make_phantom_dataset(tmp_path_factory.mktemp("deploy_raw"), n=6, size=64, seed=3)
    out = tmp_path_factory.mktemp("deploy_png")
    sources = sorted(p for p in Path(raw).rglob("*.png") if "_mask" not in p.name)
    for i, src in enumerate(sources):
        gray = np.array(Image.open(src).convert("L"))
        gray = gray[:ROWS, :ROWS] if i == 2 else gray[:ROWS, 8 : 8 + COLS]  # one square image
        if i == 1:
            rgb = np.stack([gray, (gray * 0.8).astype(np.uint8), (gray * 0.6).astype(np.uint8)], -1)
            Image.fromarray(rgb, "RGB").save(out / f"img_{i:02d}.png")
        else:
            Image.fromarray(gray).save(out / f"img_{i:02d}.png")
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, images) -> Path:
    """A narrow copy of the segmentation bundle with calibrated seeded weights (models/model.pt)."""
    if not (BUNDLE / "configs" / "inference.json").is_file():
        pytest.fail(f"{BUNDLE}/configs/inference.json is missing: the Deploy app needs the bundle's inference config")
    dst = tmp_path_factory.mktemp("deploy_bundle") / BUNDLE.name
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "runs", "__pycache__"))
    (dst / "models").mkdir()
    config = json.loads((dst / "configs" / "inference.json").read_text())
    assert "base_channels" in config, "inference.json has no base_channels to narrow the network for CPU tests"
    config["base_channels"] = TEST_WIDTH
    (dst / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    run([sys.executable, "-c", CALIBRATE, images], cwd=dst)
    return dst


@pytest.fixture(scope="module")
def bundle_masks(bundle, images, tmp_path_factory) -> dict[str, np.ndarray]:
    """The bundle's own inference (`python -m monai.bundle run`) on the PNG folder: {image stem: mask}."""
    out = tmp_path_factory.mktemp("bundle_out")
    run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--input_dir",
            images,
            "--output_dir",
            out,
        ],
        cwd=bundle,
    )
    masks = {p.name[: -len("_seg.png")]: np.array(Image.open(p)) for p in sorted(out.glob("*_seg.png"))}
    assert sorted(masks) == sorted(p.stem for p in images.glob("*.png")), sorted(masks)
    fraction = np.concatenate([(m > 0).ravel() for m in masks.values()]).mean()
    assert 0.05 < fraction < 0.95, f"degenerate reference masks (lesion fraction {fraction:.3f})"
    return masks


def run_app(deploy_python: Path, input_dir: Path, output_dir: Path, model: Path, check=True):
    return run([deploy_python, APP, "-i", input_dir, "-o", output_dir, "-m", model], check=check)


def assert_same_mask(app_png: Path, reference: np.ndarray) -> None:
    got = np.array(Image.open(app_png))
    assert got.dtype == np.uint8 and got.shape == reference.shape, (app_png, got.dtype, got.shape)
    assert got.shape in ((ROWS, COLS), (ROWS, ROWS)), got.shape
    assert set(np.unique(got).tolist()) <= {0, 255}, np.unique(got)
    assert np.array_equal(got > 0, reference > 0), f"{app_png}: {((got > 0) != (reference > 0)).sum()} pixels differ"


def export_onnx(bundle: Path) -> None:
    """`models/model.onnx` of the bundle's checkpoint, as the bundle's README exports it."""
    size = json.loads((bundle / "configs" / "inference.json").read_text())["spatial_size"]
    run(
        [
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
            json.dumps([1, 1, *size]),
            "--converter_kwargs",
            "{'dynamo': False}",
        ],
        cwd=bundle,
    )


def test_nifti_in_gives_the_bundles_nifti_mask(deploy_python, bundle, images, tmp_path):
    """A one-slice NIfTI gets a NIfTI mask, `masks/<stem>.nii.gz`, equal to the bundle's own `<stem>_seg.nii.gz`
    (`monai.bundle run`): the input's voxel grid, affine and header, values 0/1."""
    import nibabel as nib

    inputs = tmp_path / "in"
    inputs.mkdir()
    gray = np.array(Image.open(sorted(images.glob("*.png"))[0]).convert("L"))
    affine = np.diag([0.4, 0.3, 2.0, 1.0])
    nib.save(nib.Nifti1Image(gray.T[..., None].astype(np.uint8), affine), inputs / "scan.NII.GZ")
    reference = tmp_path / "bundle_out"
    cmd = ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input_dir", inputs]
    run([sys.executable, *cmd, "--output_dir", reference], cwd=bundle)
    run_app(deploy_python, inputs, tmp_path / "out", bundle)
    expected = nib.load(reference / "scan_seg.nii.gz")
    got = nib.load(tmp_path / "out" / "masks" / "scan.nii.gz")
    assert got.shape == expected.shape == (COLS, ROWS, 1) and np.allclose(got.affine, affine)  # float32 header
    assert np.array_equal(np.asarray(got.dataobj), np.asarray(expected.dataobj)) and got.get_data_dtype() == np.uint8
    [record] = json.loads((tmp_path / "out" / "predictions.json").read_text())["results"]
    assert record["mask"].endswith("scan.nii.gz") and record["lesion"] == bool(np.asarray(got.dataobj).any())


@pytest.mark.parametrize("model_form", ["bundle_folder", "torchscript", "onnx"])
@pytest.mark.precision
def test_png_folder_matches_bundle(deploy_python, bundle, images, bundle_masks, tmp_path, model_form):
    """The app's masks are the bundle's own (`monai.bundle run`, float32 on every machine), whichever model form it
    is given: exactly for the checkpoint and TorchScript; for the ONNX export (another runtime, so pixels whose logit
    is within float rounding of the threshold may flip) on at least 99.9% of the pixels."""
    if model_form == "torchscript":
        run(
            [
                sys.executable,
                "-m",
                "monai.bundle",
                "ckpt_export",
                "network_def",
                "--filepath",
                "models/model.ts",
                "--ckpt_file",
                "models/model.pt",
                "--meta_file",
                "configs/metadata.json",
                "--config_file",
                "configs/inference.json",
            ],
            cwd=bundle,
        )
        model = bundle / "models" / "model.ts"
    elif model_form == "onnx":  # a copy: the other tests run the shared bundle's checkpoint or TorchScript export
        model = tmp_path / bundle.name
        shutil.copytree(bundle, model, ignore=shutil.ignore_patterns("model.ts"))
        export_onnx(model)  # the app picks it over the checkpoint on a machine without CUDA
    else:
        model = bundle
    inputs = tmp_path / "in"
    shutil.copytree(images, inputs)
    (inputs / "notes.txt").write_text("not an image: skipped and listed in predictions.json")
    out = tmp_path / "out"
    run_app(deploy_python, inputs, out, model)

    written = sorted((out / "masks").glob("*.png"))
    assert [p.stem for p in written] == sorted(bundle_masks)
    assert json.loads((out / "predictions.json").read_text())["status"] == "complete"
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["mode"] == "image" and len(manifest["results"]) == len(bundle_masks)
    assert [Path(s["source"]).name for s in manifest["skipped"]] == ["notes.txt"]
    for rec in manifest["results"]:
        assert set(rec["seconds"]) == {"read", "inference", "write"}, rec
        assert rec["seconds"]["inference"] > 0 and min(rec["seconds"].values()) >= 0, rec
    if model_form == "onnx":
        import torch

        expected = model if torch.cuda.is_available() else model / "models" / "model.onnx"
        assert Path(manifest["model"]) == expected.resolve(), manifest["model"]
        got = np.concatenate([np.array(Image.open(p)).ravel() > 0 for p in written])
        want = np.concatenate([bundle_masks[p.stem].ravel() > 0 for p in written])
        assert (got == want).mean() >= 0.999, f"ONNX masks agree with the checkpoint's on {(got == want).mean():.5f}"
        (model / "models" / "model.pt").touch()  # weights newer than the export: refused, not run stale
        proc = run_app(deploy_python, inputs, tmp_path / "stale", model, check=False)
        assert proc.returncode == 2 and "model.onnx is older than" in proc.stderr, proc.stderr[-2000:]
        return
    for png in written:
        assert_same_mask(png, bundle_masks[png.stem])
    for rec in manifest["results"]:
        assert rec["lesion_pixels"] == int((bundle_masks[Path(rec["source"]).stem] > 0).sum())


@pytest.mark.precision
def test_dicom_matches_bundle_and_writes_seg(deploy_python, bundle, images, bundle_masks, tmp_path):
    dicom = tmp_path / "dicom"
    pngs = sorted(images.glob("*.png"))[:4]  # includes the RGB one
    run([deploy_python, APP / "png_to_us_dicom.py", dicom / "study", *pngs, "--patient-id", "PT42"])
    run([deploy_python, APP / "png_to_us_dicom.py", dicom / "ct", pngs[0], "--modality", "CT"])
    run([deploy_python, APP / "png_to_us_dicom.py", dicom / "cine", pngs[0], "--frames", "3"])
    out = tmp_path / "out"
    run_app(deploy_python, dicom, out, bundle)

    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["mode"] == "dicom"
    results = {Path(r["source"]).stem: r for r in manifest["results"] if "/study/" in r["source"]}
    assert sorted(results) == [p.stem for p in pngs] and len(manifest["results"]) == len(pngs)
    for stem, rec in results.items():
        assert rec["PatientID"] == "PT42"
        mask_png = out / "masks" / f"{rec['SOPInstanceUID']}.png"
        assert mask_png.is_file()
        assert_same_mask(mask_png, bundle_masks[stem])
    reasons = {Path(s["source"]).parent.name: s["reason"] for s in manifest["skipped"]}
    assert "multi-frame" in reasons["cine"] and "not US" in reasons["ct"], reasons

    segs = sorted((out / "dicom_seg").glob("*.dcm"))
    assert len(segs) == len(pngs)
    checked = json.loads(run([deploy_python, "-c", SEG_CHECK, out / "masks", *segs]).stdout.strip().splitlines()[-1])
    by_ref = {c["ref"]: c for c in checked}
    for rec in results.values():
        seg = by_ref[rec["SOPInstanceUID"]]
        assert seg["modality"] == "SEG" and seg["sop_class"] == "1.2.840.10008.5.1.4.1.1.66.4"
        assert seg["patient_id"] == "PT42" and seg["study"] == rec["StudyInstanceUID"] and seg["frames"] == 1
        assert seg["equal"], seg


def _bad_empty(d: Path, py: Path) -> None:
    d.mkdir()


def _bad_not_image(d: Path, py: Path) -> None:
    d.mkdir()
    (d / "report.txt").write_text("no images here")


def _bad_corrupt_png(d: Path, py: Path, images: Path) -> None:
    """Only a corrupt PNG: nothing to segment (one among good ones is listed: tests/test_serving_faults.py)."""
    d.mkdir()
    (d / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but truncated")


def _bad_no_pixel_data(d: Path, py: Path, images: Path) -> None:
    run([py, APP / "png_to_us_dicom.py", d, sorted(images.glob("*.png"))[0], "--no-pixel-data"])


def _bad_multiframe(d: Path, py: Path, images: Path) -> None:
    run([py, APP / "png_to_us_dicom.py", d, sorted(images.glob("*.png"))[0], "--frames", "4"])


@pytest.mark.parametrize(
    "case, make, expected",
    [
        ("empty", _bad_empty, "no image"),
        ("not_image", _bad_not_image, "report.txt"),
        ("corrupt_png", _bad_corrupt_png, "zz_broken.png"),
        ("no_pixel_data", _bad_no_pixel_data, "has no Pixel Data"),
        ("multiframe", _bad_multiframe, "no single-frame ultrasound"),
    ],
)
def test_bad_input_is_refused(deploy_python, bundle, images, tmp_path, case, make, expected):
    inputs = tmp_path / case
    if make in (_bad_empty, _bad_not_image):
        make(inputs, deploy_python)
    else:
        make(inputs, deploy_python, images)
    out = tmp_path / "out"
    proc = run_app(deploy_python, inputs, out, bundle, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"{case}: the app exited {proc.returncode}, expected 2 (input refused)\n{text[-3000:]}"
    assert "error: " in proc.stderr, f"{case}: no 'error: ...' line on stderr"
    assert expected in text, f"{case}: {expected!r} not in the app's output\n{text[-3000:]}"
    assert not list((out / "masks").glob("*.png")) if (out / "masks").exists() else True
    assert not (out / "dicom_seg").exists() or not list((out / "dicom_seg").iterdir())
    if case == "no_pixel_data":
        assert "no_pixel_data/" in text or str(inputs) in text  # the message names the file
    if case == "multiframe":
        skipped = json.loads((out / "predictions.json").read_text())["skipped"]
        assert len(skipped) == 1 and "multi-frame DICOM (4 frames)" in skipped[0]["reason"]


def test_a_run_that_fails_midway_says_so_in_predictions_json(deploy_python, bundle, images, tmp_path):
    """Weights of another width pass the input checks and fail in the network: `predictions.json` must read
    "failed", not an empty list of results (which would read as "no lesions")."""
    import torch

    broken = tmp_path / bundle.name
    shutil.copytree(bundle, broken)
    (broken / "models" / "model.ts").unlink(missing_ok=True)  # an export older than the weights is refused up front
    state = torch.load(broken / "models" / "model.pt", weights_only=True)
    torch.save({k: v[: v.shape[0] // 2] if v.ndim else v for k, v in state.items()}, broken / "models" / "model.pt")
    out = tmp_path / "out"
    proc = run_app(deploy_python, images, out, broken, check=False)
    assert proc.returncode != 0
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] and manifest["results"] == []


NO_LESION_CHECK = r"""
import json, sys
import numpy as np
import pydicom
out = []
for f in sys.argv[1:]:
    seg = pydicom.dcmread(f)
    out.append({"modality": seg.Modality, "frames": int(seg.NumberOfFrames), "segments": len(seg.SegmentSequence),
                "lesion_pixels": int(np.asarray(seg.pixel_array).sum())})
print(json.dumps(out))
"""


def test_no_lesion_is_an_empty_mask_and_a_valid_empty_seg(deploy_python, bundle, images, tmp_path):
    """ "No lesion" (here forced: the bundle's `min_lesion_fraction` above any lesion's share) is an answer: empty
    masks, `lesion: false` in `predictions.json`, and a DICOM SEG that reads, with its segment and no lesion pixel."""
    quiet = tmp_path / bundle.name
    shutil.copytree(bundle, quiet, ignore=shutil.ignore_patterns("model.ts", "model.onnx"))
    config = json.loads((quiet / "configs" / "inference.json").read_text())
    config["min_lesion_fraction"] = 0.99
    (quiet / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    dicom = tmp_path / "dicom"
    run([deploy_python, APP / "png_to_us_dicom.py", dicom / "study", *sorted(images.glob("*.png"))[:2]])
    for inputs, out in ((images, tmp_path / "png_out"), (dicom, tmp_path / "dicom_out")):
        run_app(deploy_python, inputs, out, quiet)
        manifest = json.loads((out / "predictions.json").read_text())
        assert manifest["status"] == "complete" and manifest["results"], manifest
        for rec in manifest["results"]:
            assert rec["lesion"] is False and rec["lesion_pixels"] == 0, rec
            mask = np.array(Image.open(rec["mask"]))
            assert mask.shape == (rec["rows"], rec["columns"]) and not mask.any()
    segs = sorted((tmp_path / "dicom_out" / "dicom_seg").glob("*.dcm"))
    assert len(segs) == 2
    checked = json.loads(run([deploy_python, "-c", NO_LESION_CHECK, *segs]).stdout.strip().splitlines()[-1])
    assert all(c == {"modality": "SEG", "frames": 1, "segments": 1, "lesion_pixels": 0} for c in checked), checked
