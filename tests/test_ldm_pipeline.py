"""LDM bundle on phantom data: autoencoder -> latent diffusion -> sampler, with tiny CPU settings."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_support import AE, DIFF, EVAL, INFER, TINY, parse_bundle, run_bundle
from PIL import Image

from mgcc import LDM_BUNDLE
from mgcc.bundles import import_bundle_scripts, importable_as_scripts


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _pixels(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return {s["file"]: np.asarray(Image.open(folder / s["file"])) for s in manifest["samples"]}


@pytest.fixture(scope="module")
def trained(prepared_phantom, tmp_path_factory):
    """Autoencoder (3 epochs, adversarial from epoch 2), unconditional (2 epochs, noise prediction), class-conditional
    (1 epoch) and mask-conditional (1 epoch, v-prediction, min-SNR weighting) diffusion."""
    root = tmp_path_factory.mktemp("ldm")
    common = dict(dataset_dir=str(prepared_phantom), output_dir=str(root / "out"), ckpt_dir=str(root / "ckpt"), **TINY)
    run_bundle(
        [AE], autoencoder_max_epochs=3, adv_weight=0.01, adv_warmup_epochs=1, val_interval=1, ae_lr=5e-4, **common
    )
    run_bundle([AE, DIFF], diffusion_max_epochs=2, prediction_type="epsilon", min_snr_gamma=None, **common)
    cond = dict(common, output_dir=str(root / "out_cond"), ckpt_dir=str(root / "ckpt_cond"), class_conditional=True)
    (root / "ckpt_cond").mkdir()
    shutil.copy(root / "ckpt" / "autoencoder.pt", root / "ckpt_cond" / "autoencoder.pt")
    run_bundle([AE, DIFF], diffusion_max_epochs=1, **cond)
    mask = dict(
        common,
        output_dir=str(root / "out_mask"),
        ckpt_dir=str(root / "ckpt_mask"),
        mask_conditional=True,
        prediction_type="v_prediction",
        min_snr_gamma=5.0,
    )
    (root / "ckpt_mask").mkdir()
    shutil.copy(root / "ckpt" / "autoencoder.pt", root / "ckpt_mask" / "autoencoder.pt")
    run_bundle([AE, DIFF], diffusion_max_epochs=1, **mask)
    return {"root": root, "common": common, "cond": cond, "mask": mask}


def sample(settings: dict, sample_dir, **overrides):
    run_bundle([INFER], workflow_type="infer", sample_dir=str(sample_dir), **{**settings, **overrides})
    return sample_dir


def test_autoencoder_steps_lower_reconstruction_loss(trained):
    out = trained["root"] / "out"
    rows = _rows(out / "autoencoder_history.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(1, len(rows) + 1))
    recon = [float(r["recon_loss"]) for r in rows]
    assert np.mean(recon[-4:]) < np.mean(recon[:4]) - 0.02, recon
    # the adversarial terms start after the warm-up epoch, not before
    assert all(float(r["disc_loss"]) == 0 for r in rows if r["epoch"] == "1")
    assert all(float(r["disc_loss"]) > 0 for r in rows if r["epoch"] != "1")
    validation = _rows(out / "autoencoder_validation.csv")
    assert [int(r["epoch"]) for r in validation] == [1, 2, 3]
    assert all(np.isfinite(float(r["val_psnr"])) and -1 <= float(r["val_ssim"]) <= 1 for r in validation)
    grid = Image.open(out / "validation" / "autoencoder_reconstruction_epoch0003.png")
    assert grid.mode == "L" and grid.size[1] > 2 * 32  # two rows: inputs, reconstructions
    diffusion = _rows(out / "diffusion_history.csv")
    assert len(diffusion) > 0 and all(np.isfinite(float(r["loss"])) for r in diffusion)


def test_sampler_writes_n_readable_pngs_and_manifest(trained, tmp_path):
    folder = sample(trained["common"], tmp_path / "a", num_samples=5, batch_size=2, num_inference_steps=4, seed=7)
    manifest = json.loads((folder / "manifest.json").read_text())
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == [f"sample_{i:05d}.png" for i in range(5)]
    assert [s["file"] for s in manifest["samples"]] == pngs
    assert [s["seed"] for s in manifest["samples"]] == [7, 8, 9, 10, 11]
    assert all(s["class"] is None for s in manifest["samples"])
    settings = manifest["settings"]
    assert settings["num_inference_steps"] == 4 and settings["scheduler"] == "DDIM"
    assert len(settings["diffusion_sha256"]) == 64 and len(settings["autoencoder_sha256"]) == 64
    for name in pngs:
        image = Image.open(folder / name)
        assert image.mode == "L" and image.size == (32, 32)
    # same seed, different batch size: the same images, up to one gray level where float sums over a
    # different batch shape round the other way
    again = sample(trained["common"], tmp_path / "b", num_samples=5, batch_size=3, num_inference_steps=4, seed=7)
    first, second = _pixels(folder), _pixels(again)
    diffs = [np.abs(first[k].astype(int) - second[k].astype(int)) for k in first]
    assert max(d.max() for d in diffs) <= 1 and np.mean([d.mean() for d in diffs]) < 0.05
    assert all(first[k].std() > 1 for k in first)  # real images, not saturated blanks
    other = _pixels(sample(trained["common"], tmp_path / "c", num_samples=5, num_inference_steps=4, seed=8))
    assert not np.array_equal(first["sample_00000.png"], other["sample_00000.png"])


def test_latent_normalisation_is_saved_and_used(trained, tmp_path):
    ckpt = trained["root"] / "ckpt"
    stored = torch.load(ckpt / "diffusion.pt", weights_only=True)
    scale, shift = stored["scale_factor"]["value"], stored["scale_factor"]["shift"]
    assert scale.shape == shift.shape == (2,)  # one per latent channel
    assert torch.isfinite(scale).all() and (scale > 0).all() and not torch.equal(scale, torch.ones(2))
    assert (shift != 0).all()
    settings = dict(trained["common"], num_samples=2, num_inference_steps=4)
    base = sample(settings, tmp_path / "base")
    recorded = json.loads((base / "manifest.json").read_text())["settings"]
    assert recorded["scale_factor"] == pytest.approx(scale.tolist()) and recorded["latent_shift"] == pytest.approx(
        shift.tolist()
    )
    # the same weights with another stored normalisation must give other images
    for name, entry in (("scale", "value"), ("shift", "shift")):
        changed = tmp_path / f"ckpt_{name}"
        changed.mkdir()
        shutil.copy(ckpt / "autoencoder.pt", changed / "autoencoder.pt")
        modified = {**stored, "scale_factor": dict(stored["scale_factor"])}
        modified["scale_factor"][entry] = stored["scale_factor"][entry] * 3.0 + 0.5
        torch.save(modified, changed / "diffusion.pt")
        other = sample(dict(settings, ckpt_dir=str(changed)), tmp_path / f"other_{name}")
        a, b = _pixels(base), _pixels(other)
        assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_global_normalisation_is_one_scale_without_shift(trained):
    scripts = import_bundle_scripts(LDM_BUNDLE)
    z_mu = torch.randn(6, 2, 2, 4, 4) * torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1) + torch.tensor([5.0, -1.0]).view(
        1, 1, 2, 1, 1
    )
    batches = [{"z_mu": z_mu, "z_sigma": torch.zeros_like(z_mu)}]
    channel = scripts.diffusion.fit_scale_factor(batches, "cpu", "channel")
    normalised = channel.normalise(z_mu[:, 0])
    assert torch.allclose(normalised.mean((0, 2, 3)), torch.zeros(2), atol=0.35)
    assert torch.allclose(channel.denormalise(normalised), z_mu[:, 0], atol=1e-5)
    single = scripts.diffusion.fit_scale_factor(batches, "cpu", "global")
    assert torch.equal(single.shift, torch.zeros(2)) and single.value[0] == single.value[1]
    with pytest.raises(ValueError, match="'latent_normalisation' must be 'channel' or 'global'"):
        scripts.diffusion.fit_scale_factor(batches, "cpu", "per-pixel")


def test_ema_weights_are_saved_and_sampled_by_default(trained, tmp_path):
    stored = torch.load(trained["root"] / "ckpt" / "diffusion.pt", weights_only=True)
    raw, ema = stored["diffusion"], stored["diffusion_ema"]
    assert raw.keys() == ema.keys() and any(not torch.equal(raw[k], ema[k]) for k in raw)
    settings = dict(trained["common"], num_samples=2, num_inference_steps=4)
    by_default = sample(settings, tmp_path / "default")
    assert json.loads((by_default / "manifest.json").read_text())["settings"]["diffusion_weights"] == "ema"
    a, b = _pixels(by_default), _pixels(sample(settings, tmp_path / "raw", diffusion_weights="raw"))
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception) as err:
        sample(settings, tmp_path / "bad", diffusion_weights="average")
    assert "'diffusion_weights' must be 'ema' or 'raw'" in "".join(str(e) for e in _chain(err.value))


def test_latents_are_encoded_once_with_mirrors_and_normalised(trained):
    scripts = import_bundle_scripts(LDM_BUNDLE)
    from monai.networks.nets import AutoencoderKL
    from torch.utils.data import default_collate

    autoencoder = AutoencoderKL(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        latent_channels=2,
        channels=[8, 16],
        num_res_blocks=1,
        norm_num_groups=8,
        attention_levels=[False, False],
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
        include_fc=False,
    )
    scripts.utils.load_weights(str(trained["root"] / "ckpt" / "autoencoder.pt"), autoencoder)
    images = torch.rand(3, 1, 32, 32)
    items = scripts.diffusion.encode_latents(
        autoencoder.eval(), [{"image": i, "class": "benign"} for i in images], "cpu", batch_size=2
    )
    z_mu, z_sigma = autoencoder.encode(images)
    mirrored_mu, _ = autoencoder.encode(images.flip(-1))
    assert len(items) == 3 and items[0]["class"] == "benign" and items[0]["z_mu"].shape == (2, 2, 16, 16)
    assert torch.allclose(torch.stack([i["z_mu"][0] for i in items]), z_mu, atol=1e-5)
    assert torch.allclose(torch.stack([i["z_mu"][1] for i in items]), mirrored_mu, atol=1e-5)
    assert torch.allclose(torch.stack([i["z_sigma"][0] for i in items]), z_sigma, atol=1e-5)
    batch = default_collate(items)
    scale = scripts.diffusion.ScaleFactor(2)
    scale.value.fill_(0.25)
    scale.shift.fill_(0.5)
    prepare = scripts.diffusion.LatentDiffusionPrepareBatch(scale, 1000)
    torch.manual_seed(0)
    latents = prepare(batch)[0]
    torch.manual_seed(0)
    expected = (scripts.diffusion.draw_latents(batch)[0] - 0.5) * 0.25
    assert torch.allclose(latents, expected)
    # each latent is a posterior sample of the image as is or mirrored, normalised
    for latent, item in zip(latents / 0.25 + 0.5, items, strict=True):
        assert min(((latent - item["z_mu"][k]).abs() / item["z_sigma"][k]).max() for k in (0, 1)) < 6


def test_conditional_sampling_honours_the_class(trained, tmp_path):
    settings = dict(trained["cond"], num_samples=3, num_inference_steps=4, guidance_scale=3.0)
    malignant = sample(settings, tmp_path / "malignant", sample_class="malignant")
    manifest = json.loads((malignant / "manifest.json").read_text())
    assert [s["class"] for s in manifest["samples"]] == ["malignant"] * 3
    assert manifest["settings"]["class_conditional"] is True and manifest["settings"]["guidance_scale"] == 3.0
    mixed = json.loads((sample(settings, tmp_path / "mix") / "manifest.json").read_text())
    assert [s["class"] for s in mixed["samples"]] == ["benign", "malignant", "normal"]
    # same noise, other class: the class reaches the network through the guided sampler and changes the image
    # (2 epochs leave the zero-initialised cross-attention small, so compare before 8-bit rounding)
    parser = parse_bundle([INFER], **settings).parser
    inferer, network = parser.get_parsed_content("inferer"), parser.get_parsed_content("network")
    batch = parser.get_parsed_content("prepare_batch")({"seed": [3, 3], "class": ["benign", "malignant"]})
    noise, conditioning = batch[0], batch[3]["conditioning"]
    assert torch.equal(noise[0], noise[1])
    out = inferer(noise, network, conditioning=conditioning)
    assert (out[0] - out[1]).abs().max() > 1e-6
    assert torch.allclose(out[:1], inferer(noise[:1], network, conditioning=conditioning[:1]), atol=1e-5)


def test_mask_conditional_training_sees_only_the_labeled_masks(trained, tmp_path):
    """The generator is trained on every train-split image, but only the labeled ('training') images bring their
    lesion mask; the unlabeled images' masks (here a datalist that lists some) never reach it."""
    folder = Path(trained["mask"]["dataset_dir"])
    datalist = json.loads((folder / "datalist.json").read_text())
    datalist = {
        k: [{key: str(folder / v) if key in ("image", "label") else v for key, v in item.items()} for item in items]
        for k, items in datalist.items()
        if isinstance(items, list)
    }
    for item in datalist["unlabeled"]:
        item["label"] = datalist["training"][0]["label"]
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    parser = parse_bundle(
        [AE, DIFF], "train", ("train#latents",), **trained["mask"], datalist=str(tmp_path / "datalist.json")
    ).parser
    latents = parser.get_parsed_content("train#latents")
    masks = torch.stack([item["mask"] for item in latents])  # (N, 2, 1, h, w): as is and mirrored
    labeled = masks.amin(dim=(1, 2, 3, 4)) >= 0
    assert len(latents) == len(datalist["training"]) + len(datalist["unlabeled"])
    assert int(labeled.sum()) == len(datalist["training"])
    assert (
        (masks[~labeled] == -1).all() and masks[labeled].max() <= 1 and masks[labeled].amax(dim=(1, 2, 3, 4)).min() > 0
    )
    assert torch.equal(masks[:, 1], masks[:, 0].flip(-1))
    assert tuple(masks.shape[-2:]) == tuple(latents[0]["z_mu"].shape[-2:])
    stored = torch.load(Path(trained["mask"]["ckpt_dir"]) / "diffusion.pt", weights_only=True)
    first_conv = next(v for k, v in stored["diffusion"].items() if v.ndim == 4)
    assert first_conv.shape[1] == 2 + 1  # latent channels + the mask channel


def test_lesion_contrast_is_negative_for_a_dark_lesion_and_skips_masks_without_lesion_or_background():
    scripts = import_bundle_scripts(LDM_BUNDLE)
    masks = torch.zeros(3, 1, 8, 8)
    masks[:2, :, 2:5, 2:5] = 1  # image 2: no lesion, left out
    images = torch.full((3, 1, 8, 8), 0.6)
    images[0, :, 2:5, 2:5] = 0.2  # darker lesion
    images[1, :, 2:5, 2:5] = 0.7  # brighter lesion
    contrast = scripts.quality.lesion_contrast(images, masks)
    assert contrast["n"] == 2 and contrast["darker_share"] == 0.5
    assert contrast["mean"] == pytest.approx((-0.4 + 0.1) / 2)


def test_labeled_repeats_list_only_the_labeled_items_again():
    scripts = import_bundle_scripts(LDM_BUNDLE)
    mask = torch.zeros(2, 1, 4, 4)
    items = [{"id": 0, "mask": mask}, {"id": 1, "mask": mask - 1}, {"id": 2, "mask": mask + 1}]  # 1: unlabeled
    assert [i["id"] for i in scripts.diffusion.repeat_labeled(items, 3)] == [0, 1, 2, 0, 2, 0, 2]
    assert scripts.diffusion.repeat_labeled(items, 1) == items
    with pytest.raises(ValueError, match="labeled_repeats"):
        scripts.diffusion.repeat_labeled(items, 0)


def test_mask_conditional_sampling_writes_labeled_pairs(trained, tmp_path):
    """Each sample comes with the mask it was generated from: a labeled training mask moved by its seed."""
    settings = dict(trained["mask"], num_samples=4, num_inference_steps=4, batch_size=3)
    folder = sample(settings, tmp_path / "a")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["settings"]["mask_conditional"] is True
    datalist = json.loads((Path(settings["dataset_dir"]) / "datalist.json").read_text())
    sources = {Path(i["label"]).name for i in datalist["training"]}
    for record in manifest["samples"]:
        image, mask = Image.open(folder / record["file"]), np.asarray(Image.open(folder / record["label"]))
        assert record["label"] == f"masks/{record['file']}" and record["mask_source"] in sources
        assert mask.shape == image.size[::-1] and set(np.unique(mask)) <= {0, 255} and (mask == 255).any()
    assert sorted(p.name for p in folder.glob("*.png")) == [s["file"] for s in manifest["samples"]]
    again = sample(settings, tmp_path / "b", batch_size=1)  # the same seeds: the same masks
    for record in manifest["samples"]:
        assert np.array_equal(
            np.asarray(Image.open(folder / record["label"])), np.asarray(Image.open(again / record["label"]))
        )
    # same noise, other mask: the mask reaches the network through the guided sampler and changes the image
    parser = parse_bundle([INFER], **settings).parser
    inferer, network = parser.get_parsed_content("inferer"), parser.get_parsed_content("network")
    source = str(Path(settings["dataset_dir"]) / datalist["training"][0]["label"])
    noise, masks, _, kwargs = parser.get_parsed_content("prepare_batch")({"seed": [3, 4], "mask_source": [source] * 2})
    assert kwargs["mode"] == "concat" and kwargs["conditioning"].shape[-2:] == noise.shape[-2:]
    assert not torch.equal(masks[0], masks[1])  # seeds 3 and 4 move the same mask differently
    out = inferer(noise[:1].expand(2, -1, -1, -1), network, **kwargs)
    assert (out[0] - out[1]).abs().max() > 1e-6


def test_v_prediction_trains_on_the_velocity_and_the_checkpoint_tells_the_sampler(trained, tmp_path):
    scripts = import_bundle_scripts(LDM_BUNDLE)
    from monai.networks.schedulers import DDPMScheduler

    z = torch.randn(2, 2, 2, 4, 4)  # (batch, as is + mirrored, channels, h, w)
    batch = {"z_mu": z, "z_sigma": torch.zeros_like(z)}
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        scheduler = DDPMScheduler(1000, prediction_type=prediction_type)
        latents, target, _, kwargs = scripts.diffusion.LatentDiffusionPrepareBatch(
            scripts.diffusion.ScaleFactor(2), 1000, scheduler=scheduler
        )(batch)
        expected = {
            "epsilon": kwargs["noise"],
            "sample": latents,
            "v_prediction": scheduler.get_velocity(latents, kwargs["noise"], kwargs["timesteps"]),
        }
        assert torch.equal(target, expected[prediction_type]), prediction_type
    with pytest.raises(ValueError, match="trained with prediction_type 'epsilon', the config asks for 'v_prediction'"):
        scripts.diffusion.DiffusionSettings("v_prediction").load_state_dict({"prediction_type": "epsilon"})
    with pytest.raises(ValueError, match="'prediction_type' must be one of"):
        scripts.diffusion.DiffusionSettings("velocity")
    mask_ckpt, plain_ckpt = Path(trained["mask"]["ckpt_dir"]), trained["root"] / "ckpt"
    assert torch.load(mask_ckpt / "diffusion.pt", weights_only=True)["settings"] == {"prediction_type": "v_prediction"}
    assert torch.load(plain_ckpt / "diffusion.pt", weights_only=True)["settings"] == {"prediction_type": "epsilon"}
    settings = dict(trained["mask"], num_samples=1, num_inference_steps=2)
    folder = sample(settings, tmp_path / "v")
    assert json.loads((folder / "manifest.json").read_text())["settings"]["prediction_type"] == "v_prediction"
    with pytest.raises(Exception) as err:  # a config that disagrees with the checkpoint
        sample(dict(settings, prediction_type="epsilon"), tmp_path / "x")
    assert "trained with prediction_type 'v_prediction', but config key 'prediction_type' is 'epsilon'" in "".join(
        str(e) for e in _chain(err.value)
    )
    # a checkpoint from before the setting: the noise
    old = tmp_path / "old_ckpt"
    old.mkdir()
    shutil.copy(plain_ckpt / "autoencoder.pt", old / "autoencoder.pt")
    stored = torch.load(plain_ckpt / "diffusion.pt", weights_only=True)
    torch.save({k: v for k, v in stored.items() if k != "settings"}, old / "diffusion.pt")
    folder = sample(dict(trained["common"], ckpt_dir=str(old), num_samples=1, num_inference_steps=2), tmp_path / "old")
    assert json.loads((folder / "manifest.json").read_text())["settings"]["prediction_type"] == "epsilon"


def test_sample_class_needs_a_conditional_model(trained, tmp_path):
    with pytest.raises(Exception) as err:
        sample(dict(trained["common"], num_samples=1, num_inference_steps=2), tmp_path / "x", sample_class="benign")
    assert "needs a class-conditional model" in "".join(str(e) for e in _chain(err.value))


def test_missing_checkpoint_is_named(trained, tmp_path):
    with pytest.raises(Exception) as err:
        sample(dict(trained["common"], ckpt_dir=str(tmp_path)), tmp_path / "x")
    assert f"checkpoint not found: {tmp_path}" in "".join(str(e) for e in _chain(err.value))


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


@pytest.mark.parametrize(
    "config_files, workflow_type",
    [([AE], "train"), ([AE, DIFF], "train"), ([INFER], "infer")],
    ids=["autoencoder", "diffusion", "inference"],
)
def test_check_properties(trained, config_files, workflow_type):
    from monai.bundle import ConfigWorkflow

    with importable_as_scripts(LDM_BUNDLE):
        workflow = ConfigWorkflow(
            config_file=config_files, workflow_type=workflow_type, bundle_root=str(LDM_BUNDLE), **trained["common"]
        )
        workflow.initialize()
        assert workflow.check_properties() == []


@pytest.mark.integration
def test_quality_metrics(trained, tmp_path):
    settings = dict(trained["common"], output_dir=str(tmp_path / "q"))
    sample(settings, tmp_path / "q" / "samples", num_samples=6, num_inference_steps=4)

    class Features(torch.nn.Module):  # a stand-in feature network, exported as FID expects (TorchScript)
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

        def forward(self, x):
            return torch.relu(self.conv(x))

    torch.jit.save(torch.jit.script(Features()), str(tmp_path / "fid.ts"))
    run_bundle([AE, EVAL], **settings, fid_network_path=str(tmp_path / "fid.ts"), num_pairs=20)
    quality = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert quality["num_samples"] == 6
    assert quality["reconstruction_validation"]["val_psnr"] > 0
    assert -1 <= quality["reconstruction_validation"]["val_ssim"] <= 1
    for key in ("generated", "real_train"):
        assert 0 < quality["diversity_msssim"][key]["mean"] <= 1 and quality["diversity_msssim"][key]["scales"] >= 2
    nn = quality["nearest_neighbour_rmse"]
    assert nn["sample_to_train"]["min"] > 0 and "validation_to_train" in nn
    for key in ("generated_vs_train", "validation_vs_train", "generated_vs_train_at_validation_size"):
        assert np.isfinite(quality["fid"][key])
    for key in ("generated_vs_train", "validation_vs_train", "reconstructed_validation_vs_train"):
        assert np.isfinite(quality["kid"][key]["mean"]) and quality["kid"][key]["std"] >= 0
    assert np.isfinite(quality["fid"]["reconstructed_validation_vs_train"])
    assert quality["fid"]["network"] == "fid.ts" and quality["frame_intensity_ratio"] > 0
    assert quality["frame_intensity_ratio_reconstruction"] > 0
    grid = Image.open(tmp_path / "q" / "real_vs_generated.png")
    assert grid.mode == "L" and grid.size[1] > 2 * 32


def test_memorisation_check_flags_copies():
    scripts = import_bundle_scripts(LDM_BUNDLE)
    check = scripts.quality.memorisation_check
    generator = torch.Generator().manual_seed(0)
    train = torch.rand(10, 1, 16, 16, generator=generator)
    validation = torch.rand(4, 1, 16, 16, generator=generator)
    copies = torch.cat([train[:3], torch.rand(2, 1, 16, 16, generator=generator)])
    assert check(copies, train, validation)["possible_copies"] == 3
    assert check(torch.rand(5, 1, 16, 16, generator=generator), train, validation)["possible_copies"] == 0


@pytest.mark.integration
def test_conditional_generation_check(trained, tmp_path):
    """scripts/check_conditional_generation.py: classifier on real train-split images, applied to the samples."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_conditional_generation.py"
    classes = ["benign", "malignant", "normal"]

    def check(samples, out):
        return subprocess.run(
            [
                sys.executable,
                str(script),
                "--dataset",
                trained["cond"]["dataset_dir"],
                "--samples",
                str(samples),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--classes",
                *classes,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    conditional = sample(dict(trained["cond"], num_samples=6, num_inference_steps=3), tmp_path / "cond")
    proc = check(conditional, tmp_path / "check")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["num_samples"] == 6 and report["train_images"] > 0
    for part in ("real_validation", "conditional_samples"):  # overall = the n-weighted mean of the per-class rates
        per_class = report[part]["per_class"].values()
        weighted = sum(c["agreement"] * c["n"] for c in per_class) / sum(c["n"] for c in per_class)
        assert abs(report[part]["overall"] - weighted) < 1e-6
    assert {k: v["n"] for k, v in report["conditional_samples"]["per_class"].items()} == {c: 2 for c in classes}
    assert "| conditional samples | 6 |" in (tmp_path / "check.md").read_text()

    unconditional = sample(dict(trained["common"], num_samples=2, num_inference_steps=3), tmp_path / "uncond")
    refused = check(unconditional, tmp_path / "refused")
    assert refused.returncode != 0 and "manifest.json" in refused.stderr and "class-conditional" in refused.stderr
