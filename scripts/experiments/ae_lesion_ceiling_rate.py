"""One-off (2026-11-26): the share of images written by ae_lesion_ceiling_reconstruct.py in which a judge run's
trained MGCC model
finds one clear lesion (the rule of src/mgcc/lesions.py, the segmentation bundle's inference.json as in the
pipeline's `lesions` stage). Writes <images_run>/diag/rates.json.

    python scripts/experiments/ae_lesion_ceiling_rate.py demo outputs/demo outputs/<run with the images>
"""

import json
import sys
from pathlib import Path

from mgcc import SEG_BUNDLE
from mgcc.lesions import lesion_rate
from mgcc.pipeline import LESIONS_CONFIGS, model_folder
from mgcc.presets import load_preset
from mgcc.stages import Run, run_bundle

judge = Run(load_preset(sys.argv[1]), Path(sys.argv[2]).resolve())
diag = Path(sys.argv[3]).resolve() / "diag"
rates = {}
for folder in sorted(p for p in diag.iterdir() if p.is_dir() and not p.name.endswith("_pred")):
    out = diag / f"{folder.name}_pred"
    run_bundle(
        f"diag-{folder.name}",
        diag,
        SEG_BUNDLE,
        LESIONS_CONFIGS,
        {
            "input_dir": str(folder),
            "datalist": None,
            "ckpt_dir": str(model_folder(judge) / "models"),
            "output_dir": str(out),
        },
        shared=judge.overrides("segmentation"),
    )
    rates[folder.name] = lesion_rate(out.glob("*_seg.png"))
    print(folder.name, rates[folder.name]["with_clear_lesion"], "/", rates[folder.name]["images"], flush=True)
(diag / "rates.json").write_text(json.dumps(rates, indent=1))
