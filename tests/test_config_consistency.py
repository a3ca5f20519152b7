"""Each model setting has one default per bundle and one place per preset.

The bundles' configs are read on their own (MONAI Label and Deploy load `inference.json` alone), so the settings that
define a network appear in several of them; these tests keep the copies equal, keep every preset's width and size in
its `common` section, and keep the `busi-gpu` preset's segmentation model the bundle's default model.
"""

import json

import pytest

from mgcc import BUNDLES_DIR, PRESETS_DIR

#: the settings that define each bundle's networks (a checkpoint is only usable with the values it was trained with)
MODEL_KEYS = {
    "ultrasound_mgcc_segmentation": ["spatial_size", "base_channels"],
    "ultrasound_ldm_generation": [
        "spatial_size",
        "image_channels",
        "latent_channels",
        "ae_channels",
        "ae_num_res_blocks",
        "ae_norm_num_groups",
        "ae_nonlocal_attn",
        "ae_padding_mode",
        "dm_channels",
        "dm_attention_levels",
        "dm_num_head_channels",
        "dm_num_res_blocks",
        "dm_norm_num_groups",
        "dm_padding_mode",
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "latent_normalisation",
        "class_conditional",
        "mask_conditional",
    ],
}
#: preset section -> the bundle whose model settings it holds
PRESET_SECTIONS = {"segmentation": "ultrasound_mgcc_segmentation", "ldm": "ultrasound_ldm_generation"}
PRESETS = sorted(PRESETS_DIR.glob("*.json"))


def model_settings_by_config(bundle: str) -> dict[str, dict[str, object]]:
    """``{key: {config file: value}}`` for every model key a config of ``bundle`` defines."""
    found: dict[str, dict[str, object]] = {}
    for path in sorted((BUNDLES_DIR / bundle / "configs").glob("*.json")):
        config = json.loads(path.read_text())
        for key in MODEL_KEYS[bundle]:
            if key in config:
                found.setdefault(key, {})[path.name] = config[key]
    return found


@pytest.mark.parametrize("bundle", sorted(MODEL_KEYS))
def test_every_config_of_a_bundle_has_the_same_model_defaults(bundle):
    found = model_settings_by_config(bundle)
    assert "spatial_size" in found and len(found["spatial_size"]) >= 2, found  # the check compares something
    differing = {key: values for key, values in found.items() if len({json.dumps(v) for v in values.values()}) > 1}
    assert not differing, f"{bundle}: model settings differ between configs: {differing}"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_a_preset_sets_each_model_setting_once_in_its_common_section(preset):
    spec = json.loads(preset.read_text())
    for section, bundle in PRESET_SECTIONS.items():
        for stage, entries in spec[section].items():
            if stage == "common":
                continue
            repeated = sorted(set(entries) & set(MODEL_KEYS[bundle]))
            assert not repeated, f"{preset.name}: {section}.{stage} sets {repeated}; set them once in {section}.common"


def test_the_bundle_default_segmentation_model_is_the_shipped_release_model():
    """The configs' defaults are the settings of the model in `models/model.pt` (`configs/busi-release.json`)."""
    common = json.loads((PRESETS_DIR / "busi-release.json").read_text())["segmentation"]["common"]
    defaults = {
        key: next(iter(values.values()))
        for key, values in model_settings_by_config("ultrasound_mgcc_segmentation").items()
    }
    assert {key: common[key] for key in defaults} == defaults


@pytest.mark.parametrize("bundle", sorted(MODEL_KEYS))
def test_metadata_uses_the_keys_current_monai_reads(bundle):
    """A key MONAI renamed makes every `monai.bundle run` print "Detected deprecated name ..." and is mapped onto its
    new name, replacing what that key held (the segmentation bundle's required packages were lost so)."""
    from monai.bundle.utils import DEPRECATED_ID_MAPPING

    meta = json.loads((BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text())
    assert not set(meta) & set(DEPRECATED_ID_MAPPING), sorted(set(meta) & set(DEPRECATED_ID_MAPPING))


def _config_values(node, key=""):
    """Every ``(id, value)`` leaf of a config, ids joined with ``#`` as MONAI writes them."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        yield key, node
        return
    for sub, value in items:
        yield from _config_values(value, f"{key}#{sub}" if key else str(sub))


CONFIGS = sorted(BUNDLES_DIR.glob("*/configs/*.json"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parents[1].name}/{p.name}")
def test_configs_read_top_to_bottom(config):
    """No ``$`` expression over 150 characters (longer ones become a named function in the bundle's scripts/), and
    no entry addressed by list position (a handler is kept or dropped by its id)."""
    for key, value in _config_values(json.loads(config.read_text())):
        assert not (isinstance(value, str) and value.startswith("$") and len(value) > 150), f"{config}: {key}"
    positional = [key for key in json.loads(config.read_text()) if any(part.isdigit() for part in key.split("#"))]
    assert not positional, f"{config}: {positional}"
