"""Data sources and the iteration-indexed batch stream of the MGCC segmentation bundle."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandAxisFlipd, Resized
from PIL import Image

from mgcc.bundles import import_bundle_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"


scripts = import_bundle_scripts(BUNDLE)


def datasets(prepared: Path):
    datalist = str(prepared / "datalist.json")
    keys = ["image", "label"]
    labeled = CacheDataset(
        scripts.data.datalist_section(datalist, "training"),
        Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Resized(keys, (32, 32)), RandAxisFlipd(keys, prob=0.5)]),
        progress=False,
    )
    unlabeled = CacheDataset(
        scripts.data.unlabeled_datalist("real", datalist, None),
        Compose(
            [
                LoadImaged("image"),
                EnsureChannelFirstd("image"),
                Resized("image", (32, 32)),
                RandAxisFlipd("image", prob=0.5),
            ]
        ),
        progress=False,
    )
    return labeled, unlabeled


def test_batches_depend_only_on_seed_and_iteration(prepared_phantom):
    labeled, unlabeled = datasets(prepared_phantom)
    stream = scripts.data.SemiSupervisedBatches(labeled, 4, unlabeled, 4, seed=3)
    b7 = stream[7]
    assert b7["image"].shape == (4, 1, 32, 32) and b7["label"].shape == (4, 1, 32, 32)
    assert b7["unlabeled"].shape == (4, 1, 32, 32)
    stream[2], stream[11]  # other draws in between change nothing
    again = stream[7]
    for key in ("image", "label", "unlabeled"):
        assert torch.equal(b7[key], again[key])
    assert not torch.equal(stream[8]["image"], b7["image"])
    other_seed = scripts.data.SemiSupervisedBatches(labeled, 4, unlabeled, 4, seed=4)[7]
    assert not torch.equal(other_seed["unlabeled"], b7["unlabeled"])


def test_each_pass_visits_every_labeled_image_once(prepared_phantom):
    labeled, _ = datasets(prepared_phantom)
    n = len(labeled)
    stream = scripts.data.SemiSupervisedBatches(labeled, 1, seed=0)
    seen = [str(stream[i]["image"].meta["filename_or_obj"][0]) for i in range(n)]
    assert len(set(seen)) == n


def test_ranks_draw_disjoint_samples(prepared_phantom):
    labeled, _ = datasets(prepared_phantom)
    n = len(labeled)
    names = []
    for rank in (0, 1):
        stream = scripts.data.SemiSupervisedBatches(labeled, 1, seed=0, rank=rank, world_size=2)
        names += [str(stream[i]["image"].meta["filename_or_obj"][0]) for i in range(n // 2)]
    assert len(set(names)) == 2 * (n // 2)


def test_sampler_starts_at_the_followed_engine_iteration():
    sampler = scripts.data.IterationSampler()
    it = iter(sampler)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    sampler.follow(SimpleNamespace(state=SimpleNamespace(iteration=40)))
    it = iter(sampler)
    assert [next(it) for _ in range(2)] == [40, 41]


def test_unlabeled_sources(prepared_phantom, tmp_path):
    datalist = str(prepared_phantom / "datalist.json")
    real = scripts.data.unlabeled_datalist("real", datalist, None)
    assert real and all("label" not in d for d in real)
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(samples / f"sample_{i:05d}.png")
    manifest = {"settings": {}, "samples": [{"file": f"sample_{i:05d}.png", "seed": i} for i in range(3)]}
    (samples / "manifest.json").write_text(json.dumps(manifest))
    synthetic = scripts.data.unlabeled_datalist("synthetic", datalist, str(samples))
    assert [Path(d["image"]).name for d in synthetic] == [f"sample_{i:05d}.png" for i in range(3)]
    assert len(scripts.data.unlabeled_datalist("both", datalist, str(samples))) == len(real) + 3

    with pytest.raises(ValueError, match="needs synthetic_dir"):
        scripts.data.unlabeled_datalist("synthetic", datalist, None)
    with pytest.raises(ValueError, match="unlabeled_source"):
        scripts.data.unlabeled_datalist("fake", datalist, None)
    (samples / "sample_00001.png").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json: 1 listed file"):
        scripts.data.synthetic_datalist(str(samples))
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        scripts.data.synthetic_datalist(str(tmp_path))


def test_synthetic_pairs_need_the_mask_each_sample_was_generated_from(tmp_path):
    samples = tmp_path / "samples"
    (samples / "masks").mkdir(parents=True)
    records = []
    for i in range(2):
        Image.fromarray(np.full((16, 16), 90, np.uint8)).save(samples / f"sample_{i:05d}.png")
        Image.fromarray(np.full((16, 16), 255, np.uint8)).save(samples / "masks" / f"sample_{i:05d}.png")
        records.append({"file": f"sample_{i:05d}.png", "seed": i, "label": f"masks/sample_{i:05d}.png"})
    (samples / "manifest.json").write_text(json.dumps({"settings": {}, "samples": records}))
    pairs = scripts.data.synthetic_datalist(str(samples), labeled=True)
    assert [Path(d["label"]).relative_to(samples).as_posix() for d in pairs] == [r["label"] for r in records]
    assert all("label" not in d for d in scripts.data.synthetic_datalist(str(samples)))
    (samples / "masks" / "sample_00001.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 listed file"):
        scripts.data.synthetic_datalist(str(samples), labeled=True)
    del records[1]["label"]
    (samples / "manifest.json").write_text(json.dumps({"settings": {}, "samples": records}))
    with pytest.raises(ValueError, match="1 sample\\(s\\) have no mask, e.g. sample_00001.png"):
        scripts.data.synthetic_datalist(str(samples), labeled=True)


def test_datalist_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        scripts.data.datalist_section(str(tmp_path / "nope.json"), "training")
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [], "test": [{"image": "images/a.png", "label": "labels/a.png"}]}))
    with pytest.raises(ValueError, match="'training' is empty"):
        scripts.data.datalist_section(str(path), "training")
    with pytest.raises(KeyError, match="no section 'validation'"):
        scripts.data.datalist_section(str(path), "validation")
    with pytest.raises(FileNotFoundError, match="missing"):
        scripts.data.datalist_section(str(path), "test")


def test_resume_skips_a_checkpoint_cut_short(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint_epoch=<n>.pt checkpoint in"):
        scripts.data.latest_checkpoint(str(tmp_path))
    for epoch in (2, 10):
        torch.save({"epoch": epoch}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    assert scripts.data.latest_checkpoint(str(tmp_path)).endswith("checkpoint_epoch=10.pt")
    newest = tmp_path / "checkpoint_epoch=10.pt"
    newest.write_bytes(newest.read_bytes()[:200])  # a run killed while saving
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert scripts.data.latest_checkpoint(str(tmp_path)).endswith("checkpoint_epoch=2.pt")


def test_inference_inputs_that_would_lose_or_mix_up_results_are_refused(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    gray = np.zeros((40, 40), np.uint8)
    for name in ("a.png", "b.jpg", "c.bmp"):
        Image.fromarray(gray).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not .*: notes.txt"):
        found = scripts.data.inference_datalist(str(folder), output_dir=str(tmp_path / "out"))
    assert [Path(d["image"]).name for d in found] == ["a.png", "b.jpg", "c.bmp"]
    with pytest.raises(SystemExit, match="output_dir is the input folder"):
        scripts.data.inference_datalist(str(folder), output_dir=str(folder) + "/")
    Image.fromarray(gray).save(folder / "a.bmp")
    with pytest.raises(SystemExit, match=r"a.bmp and .*a.png would both be written as a_seg.png"):
        scripts.data.inference_datalist(str(folder), output_dir=str(tmp_path / "out"))


def test_bad_inference_folders_stop_with_one_line(tmp_path):
    """Through `python -m monai.bundle run` the message is the whole output: a SystemExit passes the config parser."""
    (tmp_path / "only_sub" / "scans").mkdir(parents=True)
    (tmp_path / "a_file").write_text("x")
    cases = {
        str(tmp_path / "missing"): "input_dir is not a folder",
        str(tmp_path / "only_sub"): r"no PNG, JPEG, BMP or NIfTI images in input_dir .*only_sub \(it holds 1 folder",
    }
    for folder, message in cases.items():
        with pytest.raises(SystemExit, match=message):
            scripts.data.inference_datalist(folder, output_dir=str(tmp_path / "out"))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "only_sub" / "a.png")
    with pytest.raises(SystemExit, match="output_dir .*a_file is a file, not a folder"):
        scripts.data.inference_datalist(str(tmp_path / "only_sub"), output_dir=str(tmp_path / "a_file"))


def test_iterations_must_be_whole_validation_intervals():
    assert scripts.trainer.iterations_to_epochs(200, 50) == 4
    with pytest.raises(ValueError, match="multiple of val_interval"):
        scripts.trainer.iterations_to_epochs(210, 50)


def test_rampup_formula():
    ramp = scripts.trainer.SigmoidRampUp(7.0, 100)
    assert ramp(0) == pytest.approx(7.0 * np.exp(-5.0))
    assert ramp(50) == pytest.approx(7.0 * np.exp(-5.0 * 0.25))
    assert ramp(100) == ramp(1000) == pytest.approx(7.0)
    assert scripts.trainer.SigmoidRampUp(7.0, 0)(0) == 7.0


def test_mean_teacher_averages_the_student_with_the_ssl4mis_decay():
    """Teacher after step k: decay min(1 - 1/k, ema_decay) times itself plus the rest of the student (the first
    step copies the student); PyTorch's AveragedModel does the update, the trainer gives the decay."""
    from functools import partial

    from torch.optim.swa_utils import AveragedModel

    student = torch.nn.Linear(1, 1, bias=False)
    owner = SimpleNamespace(ema_decay=0.99)
    teacher = AveragedModel(student, avg_fn=partial(scripts.trainer.MeanTeacherTrainer._ema, owner))
    expected = None
    for step in range(1, 301):
        weight = float(step % 7)
        student.weight.data.fill_(weight)
        teacher.update_parameters(student)
        decay = min(1.0 - 1.0 / step, 0.99)
        expected = weight if expected is None else decay * expected + (1.0 - decay) * weight
        assert teacher.module.weight.item() == pytest.approx(expected, rel=1e-5), step


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    states = scripts.trainer.RandomStates()
    torch.save(states.state_dict(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    states.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert __import__("random").random() == expected[2]


def test_evaluation_report_applies_the_empty_mask_rules(tmp_path):
    from monai.data import MetaTensor
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    size = 16
    label = torch.zeros(5, 1, size, size)
    pred = torch.zeros(5, 1, size, size)
    label[1, :, 4:8, 4:8] = 1  # lesion missed: one mask empty
    label[2, :, 4:8, 4:8] = 1
    pred[2, :, 4:8, 5:9] = 1  # partial overlap
    pred[3, :, 0:2, 0:2] = 1  # a lesion drawn on a lesion-free image
    label[4, :, 4:8, 4:8] = 1
    pred[4, :, 10:12, 10:12] = 1  # a lesion drawn, but not where the lesion is: not found
    # sample 0: both empty
    details = {
        "dice": DiceMetric(include_background=True, ignore_empty=False, reduction="none")(pred, label),
        "iou": MeanIoU(include_background=True, ignore_empty=False, reduction="none")(pred, label),
        "hd95": HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(pred, label),
    }
    outputs = [
        {
            "image": MetaTensor(torch.rand(1, size, size), meta={"filename_or_obj": f"/x/img_{i}.png"}),
            "label": label[i],
            "pred": pred[i],
        }
        for i in range(5)
    ]
    engine = SimpleNamespace(
        state=SimpleNamespace(output=outputs, metric_details=details), logger=__import__("logging").getLogger("t")
    )
    report = scripts.handlers.EvaluationReport(
        str(tmp_path), {"dice": "dice", "iou": "iou", "hd95": "hd95"}, classes={"/x/img_0.png": "normal"}
    )
    report._collect(engine)
    report._write(engine)
    with open(tmp_path / "per_image.csv") as f:
        rows = list(__import__("csv").DictReader(f))
    assert [r["image"] for r in rows] == ["img_0.png", "img_1.png", "img_2.png", "img_3.png", "img_4.png"]
    assert rows[0]["class"] == "normal"
    assert float(rows[0]["dice"]) == 1.0 and float(rows[0]["iou"]) == 1.0 and float(rows[0]["hd95"]) == 0.0
    assert float(rows[1]["dice"]) == 0.0 and float(rows[1]["hd95"]) == pytest.approx(np.hypot(size, size))
    assert float(rows[2]["dice"]) == pytest.approx(2 * 12 / 32) and float(rows[2]["hd95"]) == pytest.approx(1.0)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 5
    assert summary["dice"]["mean"] == pytest.approx((1.0 + 0.0 + 0.75 + 0.0 + 0.0) / 5)
    # lesion images (1, 2, 4): Dice over them, one of three found; lesion-free images (0, 3): one of two left empty
    lesion_dice = {"mean": pytest.approx(0.25), "std": pytest.approx(np.std([0, 0.75, 0]))}
    assert summary["lesion_images"] == {"n": 3, "dice": lesion_dice, "sensitivity": pytest.approx(1 / 3)}
    assert summary["lesion_free_images"] == {"n": 2, "specificity": 0.5}
    assert (tmp_path / "overlay_worst.png").is_file()


def test_predictions_manifest_says_which_images_have_no_lesion(tmp_path):
    from monai.data import MetaTensor

    pred = torch.zeros(2, 1, 8, 6)
    pred[1, :, 2:4, 2:5] = 1
    outputs = [
        {"image": MetaTensor(torch.rand(1, 8, 6), meta={"filename_or_obj": f"/x/{name}"}), "pred": pred[i]}
        for i, name in enumerate(["normal (1).png", "scan.nii.gz"])
    ]
    engine = SimpleNamespace(state=SimpleNamespace(output=outputs), logger=__import__("logging").getLogger("t"))
    manifest = scripts.handlers.PredictionsManifest(str(tmp_path))
    manifest._collect(engine)
    manifest._write(engine)
    written = json.loads((tmp_path / "predictions.json").read_text())
    assert (written["images"], written["no_lesion"]) == (2, 1)
    assert written["results"] == [
        {"image": "/x/normal (1).png", "mask": "normal (1)_seg.png", "lesion": False, "lesion_pixels": 0},
        {"image": "/x/scan.nii.gz", "mask": "scan_seg.nii.gz", "lesion": True, "lesion_pixels": 6},
    ]


def _odd_images(folder: Path) -> list[Path]:
    """One image per pixel format a user may hand to inference: 16-bit, palette, RGB, RGBA and LA with partial
    alpha, 1-bit, 8-bit grayscale, and an RGB JPEG."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (20, 30, 1), dtype=np.uint8)
    images = {
        "sixteen.png": Image.fromarray((gray.astype(np.uint16) * 257 + 100).astype(np.uint16)),
        "palette.png": Image.fromarray(rgb).quantize(16),
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.concatenate([rgb, alpha], -1), mode="RGBA"),
        "la.png": Image.fromarray(np.stack([gray, alpha[..., 0]], -1), mode="LA"),
        "bilevel.png": Image.fromarray(gray > 128),
        "gray.png": Image.fromarray(gray),
        "rgb.jpg": Image.fromarray(rgb),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / name)
    return [folder / name for name in images]


def test_inference_reads_every_pixel_format_as_prepare_does(tmp_path):
    """Training images are what `mgcc prepare` writes; inference must see the same grey levels for the same file."""
    from mgcc.data.validate import read_image

    LUMA_WEIGHTS = scripts.image_contract.LUMA_WEIGHTS

    load = scripts.transforms.LoadImageGrayscaled(keys="image", image_only=True)
    for path in _odd_images(tmp_path):
        loaded = load({"image": str(path)})["image"]
        if path.suffix == ".jpg":  # prepare reads PNG only: compare with the decoded file by the same luma rule
            with Image.open(path) as image:
                expected = np.rint(np.asarray(image, dtype=np.float64) @ LUMA_WEIGHTS).astype(np.uint8)
        else:
            expected, _ = read_image(path)
        assert loaded.shape == expected.T.shape, path.name  # MONAI's 2D order: (W, H)
        np.testing.assert_array_equal(np.asarray(loaded).T, expected, err_msg=path.name)


def test_a_truncated_image_is_one_error_naming_it(tmp_path):
    path = _odd_images(tmp_path)[2]
    path.write_bytes(path.read_bytes()[:200])
    load = scripts.transforms.LoadImageGrayscaled(keys="image", image_only=True)
    with pytest.raises(ValueError, match=f"{path}: unreadable or truncated image"):
        load({"image": str(path)})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.full((32, 32), np.nan, np.float32), "NaN or infinite"),
        (
            np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.int16),
            r"values 0..4095 are outside the 8-bit gray levels",
        ),
        (np.linspace(0, 1, 32 * 32).reshape(32, 32).astype(np.float32), "look normalised to 0..1"),
    ],
)
def test_inputs_that_are_not_8bit_gray_levels_are_refused(values, message):
    transform = scripts.transforms.AsGrayscale2Dd("image")
    with pytest.raises(ValueError, match=message):
        transform({"image": torch.as_tensor(values)[None]})


def test_8bit_gray_levels_pass_and_a_blank_image_is_warned_about():
    transform = scripts.transforms.AsGrayscale2Dd("image")
    transform({"image": torch.arange(0, 256, dtype=torch.float32).reshape(1, 16, 16)})
    with pytest.warns(UserWarning, match="blank image"):
        transform({"image": torch.zeros(1, 16, 16)})
    scripts.transforms.AsGrayscale2Dd("label", gray_levels=False)({"label": torch.zeros(1, 16, 16)})  # masks: no check


def test_a_lesion_smaller_than_the_minimum_share_becomes_no_lesion_and_the_mask_still_inverts():
    """`EmptyBelowAread` zeroes a probability map whose lesion covers less than `min_fraction` of it, keeps larger
    ones untouched, and its output still inverts to the input's size (what the bundle's postprocessing does next)."""
    from monai.data import MetaTensor
    from monai.transforms import Compose, Invertd, Resized

    resize = Compose([Resized(keys="image", spatial_size=(16, 16))])
    image = resize({"image": MetaTensor(torch.rand(1, 40, 24))})["image"]
    rule = scripts.postprocessing.EmptyBelowAread(keys="pred", min_fraction=0.05)
    for pixels, kept in ((12, False), (13, True)):  # 12 / 256 = 0.047 < 0.05 <= 13 / 256
        prob = torch.zeros(1, 16, 16)
        prob.view(-1)[:pixels] = 0.9
        pred = MetaTensor(prob, meta=image.meta, applied_operations=image.applied_operations)
        out = rule({"pred": pred, "image": image})
        assert bool(out["pred"].any()) is kept, pixels
        inverted = Invertd(keys="pred", transform=resize, orig_keys="image")(out)["pred"]
        assert inverted.shape == (1, 40, 24)
    assert scripts.postprocessing.EmptyBelowAread(keys="pred")({"pred": torch.full((1, 4, 4), 0.9)})["pred"].all()
    with pytest.raises(ValueError, match="config key 'min_lesion_fraction' must be in \\[0, 1\\), got 1.5"):
        scripts.postprocessing.EmptyBelowAread(keys="pred", min_fraction=1.5)


def test_inference_and_evaluation_decide_no_lesion_alike():
    """The share below which a prediction is "no lesion", and the flip test-time augmentation, are the same for the
    masks users get and the numbers evaluate.json reports; training's model selection runs without them."""
    configs = BUNDLE / "configs"
    inference, evaluate, train = (
        json.loads((configs / f"{n}.json").read_text()) for n in ("inference", "evaluate", "train")
    )
    assert inference["min_lesion_fraction"] == evaluate["min_lesion_fraction"]
    assert train["min_lesion_fraction"] == 0.0
    assert inference["flip_tta"] == evaluate["flip_tta"]
    assert inference["network_def"]["flip_tta"] == evaluate["network_def#flip_tta"] == "@flip_tta"
    assert "flip_tta" not in train["network_def"]


def test_the_flip_tta_mirror_is_left_right_on_the_bundles_input(tmp_path):
    """``flip_tta`` mirrors the network input's first spatial axis; through inference.json's preprocessing that is
    the image's width (MONAI's readers put x first), so the augmentation mirrors left and right, never depth."""
    from monai.bundle import ConfigParser

    from mgcc.bundles import importable_as_scripts

    pixels = np.zeros((32, 48), dtype=np.uint8)  # 32 rows (depth) x 48 columns (width)
    pixels[:, :24] = 200  # left half bright
    Image.fromarray(pixels).save(tmp_path / "left.png")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    with importable_as_scripts(BUNDLE):
        image = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "left.png")})["image"]
    width_axis = image[0].mean(dim=1)  # the axis flip_tta mirrors (dim 2 of the batch, dim 1 here)
    assert image.shape == (1, 128, 128)
    assert width_axis[:64].mean() > 0.6 and width_axis[64:].mean() < 0.2  # gray levels scaled to 0..1
