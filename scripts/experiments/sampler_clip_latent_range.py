"""One-off (2026-11-26): a run's train-split latents (autoencoder posterior mean), normalised with the diffusion
checkpoint's per-channel scale factor: their range, and the share beyond +-3/4/5 inside and outside lesion masks.

    python scripts/experiments/sampler_clip_latent_range.py outputs/<run>
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
for k, v in json.loads((run / "autoencoder" / "args.json").read_text()).items():
    if k not in ("config_file", "meta_file", "logging_file"):
        parser[k] = v
parser["bundle_root"] = str(LDM)
with importable_as_scripts(LDM):  # the config imports the bundle's package as `scripts`
    ae = load_weights(str(run / "ldm_models" / "autoencoder.pt"), parser.get_parsed_content("autoencoder_def")).eval()
    pre = parser.get_parsed_content("validate#preprocessing")
sf = torch.load(run / "ldm_models" / "diffusion.pt", map_location="cpu", weights_only=False)["scale_factor"]
root = run / "prepare" / "dataset"
dl = json.loads((root / "datalist.json").read_text())
zs, ms = [], []
for sec in ("training", "unlabeled"):
    for e in dl[sec]:
        img = pre({"image": str(root / e["image"])})["image"][None]
        with torch.no_grad():
            mu, _ = ae.encode(img)
        z = (mu[0] - sf["shift"][:, None, None]) * sf["value"][:, None, None]
        zs.append(z)
        if "label" in e:
            m = np.asarray(Image.open(root / e["label"]).convert("L").resize(z.shape[1:][::-1], Image.BOX)) > 127
            ms.append((z, torch.from_numpy(m)))
Z = torch.stack(zs)
print("all: min", Z.amin((0, 2, 3)).tolist(), "max", Z.amax((0, 2, 3)).tolist())
for t in (3, 4, 5):
    print(f"|z|>{t}: all {(Z.abs() > t).float().mean():.4f}", end=" ")
les = torch.cat([z[:, m] for z, m in ms], 1)
bg = torch.cat([z[:, ~m] for z, m in ms], 1)
print(
    "\nlesion latents per channel mean", les.mean(1).tolist(), "min", les.amin(1).tolist(), "max", les.amax(1).tolist()
)
for t in (3, 4, 5):
    print(f"|z|>{t}: lesion {(les.abs() > t).float().mean():.3f} background {(bg.abs() > t).float().mean():.4f}")
