"""Which diffusion weights `inference.json` samples with by default: the generator bundle ships an unconditional
`diffusion.pt` and a mask-conditional `diffusion_mask.pt`; a trained run's folder has only `diffusion.pt`."""

from mgcc import LDM_BUNDLE
from mgcc.bundles import import_bundle_scripts


def test_the_mask_conditional_mode_samples_the_mask_model_where_the_folder_has_one(tmp_path):
    choose = import_bundle_scripts(LDM_BUNDLE).utils.diffusion_checkpoint
    (tmp_path / "diffusion.pt").write_bytes(b"")
    assert choose(str(tmp_path), False) == str(tmp_path / "diffusion.pt")
    assert choose(str(tmp_path), True) == str(tmp_path / "diffusion.pt")  # a mask-conditional run's own folder
    (tmp_path / "diffusion_mask.pt").write_bytes(b"")
    assert choose(str(tmp_path), True) == str(tmp_path / "diffusion_mask.pt")
    assert choose(str(tmp_path), False) == str(tmp_path / "diffusion.pt")
