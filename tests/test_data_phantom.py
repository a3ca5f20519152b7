"""The phantom generator: BUSI layout, class shares, determinism, and lesions that look like lesions."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgcc.data.phantom import class_counts, make_phantom_dataset, phantom


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_layout_and_class_shares(phantom_raw):
    assert class_counts(48) == {"benign": 24, "malignant": 17, "normal": 7}
    for label, count in class_counts(48).items():
        images = sorted(path for path in (phantom_raw / label).glob("*.png") if "_mask" not in path.name)
        assert len(images) == count
        for image in images:
            assert (image.parent / f"{image.stem}_mask.png").is_file()
            assert Image.open(image).mode == "L" and Image.open(image).size == (64, 64)


def test_masks_are_binary_and_normal_masks_empty(phantom_raw):
    for mask_path in phantom_raw.glob("*/*_mask*.png"):
        mask = _load(mask_path)
        assert set(np.unique(mask)) <= {0, 255}
        assert (mask.any()) == (mask_path.parent.name != "normal"), mask_path


def test_every_sixth_benign_image_has_a_second_mask_file(phantom_raw):
    second = sorted(path.name for path in phantom_raw.glob("*/*_mask_1.png"))
    assert second == [f"benign ({k})_mask_1.png" for k in (12, 18, 24, 6)]


def test_lesions_are_hypoechoic(phantom_raw):
    for mask_path in phantom_raw.glob("*/*_mask.png"):
        if mask_path.parent.name == "normal":
            continue
        image = _load(mask_path.with_name(mask_path.name.replace("_mask", ""))).astype(float)
        mask = _load(mask_path) > 0
        assert image[mask].mean() < image[~mask].mean() - 40, mask_path


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = make_phantom_dataset(tmp_path / "a", n=6, size=32, seed=5)
    second = make_phantom_dataset(tmp_path / "b", n=6, size=32, seed=5)
    other = make_phantom_dataset(tmp_path / "c", n=6, size=32, seed=6)
    names = sorted(path.relative_to(first) for path in first.rglob("*.png"))
    assert names == sorted(path.relative_to(second) for path in second.rglob("*.png"))
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in names)
    assert any((first / name).read_bytes() != (other / name).read_bytes() for name in names)


def test_cli_writes_requested_size(tmp_path, capsys):
    phantom(str(tmp_path / "cli"), n=4, size=40, seed=1)
    assert "2 benign, 1 malignant, 1 normal" in capsys.readouterr().out
    assert Image.open(tmp_path / "cli" / "malignant" / "malignant (1).png").size == (40, 40)


@pytest.mark.integration
def test_a_small_network_finds_the_lesions(tmp_path):
    """300 iterations of a tiny MONAI UNet on 40 phantom images segment 14 held-out ones (Dice > 0.7)."""
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    root = make_phantom_dataset(tmp_path, n=64, size=64, seed=0)
    images = sorted(path for path in root.glob("*/*.png") if "_mask" not in path.name and path.parent.name != "normal")
    inputs = torch.from_numpy(np.stack([_load(path) for path in images]) / 255.0).float()[:, None]
    targets = torch.from_numpy(
        np.stack([_load(path.with_name(f"{path.stem}_mask.png")) > 0 for path in images])
    ).float()[:, None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is fastest on a shared CPU
    try:
        network = UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1)
        optimizer = torch.optim.Adam(network.parameters(), 3e-3)
        loss = DiceCELoss(sigmoid=True)
        for _ in range(300):
            batch = torch.randint(0, 40, (8,))
            optimizer.zero_grad()
            loss(network(inputs[batch]), targets[batch]).backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            predicted = (network(inputs[40:]).sigmoid() > 0.5).float()
    finally:
        torch.set_num_threads(threads)
    overlap = (predicted * targets[40:]).sum((1, 2, 3))
    dice = 2 * overlap / (predicted.sum((1, 2, 3)) + targets[40:].sum((1, 2, 3)))
    assert dice.mean() > 0.7, dice


def test_phantom_refuses_a_folder_with_other_files(tmp_path, capsys):
    real = tmp_path / "data" / "benign" / "benign (1).png"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"the user's image")
    with pytest.raises(SystemExit) as exit_info:
        phantom(out=str(tmp_path / "data"), n=8, size=32)
    assert exit_info.value.code == 2 and "holds no phantom dataset" in capsys.readouterr().err
    assert real.read_bytes() == b"the user's image" and sorted(p.name for p in real.parent.iterdir()) == [real.name]


def test_phantom_replaces_an_earlier_phantom_whole(tmp_path):
    make_phantom_dataset(tmp_path / "ph", n=24, size=32)
    make_phantom_dataset(tmp_path / "ph", n=8, size=32)
    images = [p for p in (tmp_path / "ph").rglob("*.png") if "_mask" not in p.name]
    assert len(images) == 8
