"""One-off (2026-11-26): write a demo run's real phantom images (training, unlabeled, test sections) at 64x64 and
their reconstructions by the run's autoencoder as PNGs under <run>/diag/{raw64,recon}_<section>/.

    python scripts/experiments/ae_lesion_ceiling_reconstruct.py outputs/<run>
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image

from mgcc import LDM_BUNDLE as LDM
from mgcc.bundles import import_bundle_scripts, importable_as_scripts

load_weights = import_bundle_scripts(LDM).utils.load_weights

run = Path(sys.argv[1]).resolve()
parser = ConfigParser()
parser.read_config([str(LDM / "configs" / "train_autoencoder.json")])
for key, value in json.loads((run / "autoencoder" / "args.json").read_text()).items():
    if key not in ("config_file", "meta_file", "logging_file"):
        parser[key] = value
parser["bundle_root"] = str(LDM)
with importable_as_scripts(LDM):  # the config imports the bundle's package as `scripts`
    autoencoder = load_weights(
        str(run / "ldm_models" / "autoencoder.pt"), parser.get_parsed_content("autoencoder_def")
    ).eval()
    preprocess = parser.get_parsed_content("validate#preprocessing")
root = run / "prepare" / "dataset"
datalist = json.loads((root / "datalist.json").read_text())
for section in ("training", "unlabeled", "test"):
    for kind in ("raw64", "recon"):
        (run / "diag" / f"{kind}_{section}").mkdir(parents=True, exist_ok=True)
    for entry in datalist[section]:
        image = preprocess({"image": str(root / entry["image"])})["image"][None]
        with torch.no_grad():
            recon = autoencoder.reconstruct(image)[0, 0].clamp(0, 1).numpy()
        name = Path(entry["image"]).stem + ".png"
        for kind, array in (("raw64", image[0, 0].numpy()), ("recon", recon)):
            Image.fromarray((array * 255).round().astype(np.uint8)).save(run / "diag" / f"{kind}_{section}" / name)
