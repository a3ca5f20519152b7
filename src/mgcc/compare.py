"""`mgcc compare`: supervised-only vs MGCC with real, synthetic, or both kinds of unlabeled images.

All variants share the preset's data, generator and training budget; only the unlabeled set (or its absence)
changes. The result is one table, `<out>/compare/compare.md` (+ `compare.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

from mgcc.pipeline import DEFAULT_OUT, STAGES, Run, evaluate_stage, execute_stages, segmentation_stage
from mgcc.presets import load_preset
from mgcc.report import metrics_table

#: variant -> (bundle config files, overrides)
VARIANTS: dict[str, tuple[list[str], dict]] = {
    "supervised": (["train.json", "train_supervised.json"], {}),
    "mgcc-real": (["train.json"], {"unlabeled_source": "real"}),
    "mgcc-synthetic": (["train.json"], {"unlabeled_source": "synthetic"}),
    "mgcc-both": (["train.json"], {"unlabeled_source": "both"}),
}
GENERATOR_STAGES = ("prepare", "autoencoder", "diffusion", "sample", "quality")


def compare(preset: str = "busi-cpu", data: str | None = None, out: str | None = None,
            variants: str | list[str] = tuple(VARIANTS)) -> None:
    """Train and evaluate each variant at the same labeled fraction and budget, then tabulate test metrics.

    Args:
        preset: preset name or path (see `mgcc run`).
        data: raw dataset folder; default: the preset's built-in phantom data.
        out: output folder; default `outputs/<preset>`.
        variants: comma-separated subset of supervised, mgcc-real, mgcc-synthetic, mgcc-both.
    """
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    spec = load_preset(preset)
    run = Run(spec, (Path(out) if out else DEFAULT_OUT / spec["name"]).resolve(),
               Path(data).resolve() if data else None)
    run.out.mkdir(parents=True, exist_ok=True)

    needs_samples = any(VARIANTS[n][1].get("unlabeled_source") in ("synthetic", "both") for n in names)
    stages = [s for s in STAGES if s.name in GENERATOR_STAGES and (needs_samples or s.name == "prepare")]
    for name in names:
        files, overrides = VARIANTS[name]
        stages += [segmentation_stage(name, files, overrides), evaluate_stage(name)]
    execute_stages(run, stages)

    rows = {}
    for name in names:
        summary = run.folder(f"evaluate-{name}") / "evaluation" / "summary.json"
        rows[name] = json.loads(summary.read_text())
    folder = run.folder("compare")
    folder.mkdir(exist_ok=True)
    (folder / "compare.json").write_text(json.dumps({"preset": spec["name"], "results": rows}, indent=2))
    table = metrics_table(rows)
    (folder / "compare.md").write_text(f"# MGCC comparison — preset `{spec['name']}`\n\n{table}\n")
    print(table)
    print(f"[mgcc] comparison: {folder / 'compare.md'}")
