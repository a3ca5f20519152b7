"""`mgcc compare` bookkeeping: seeds, paired per-image Dice differences pooled over seeds, the summary over seeds."""

import csv
from pathlib import Path

import pytest

from mgcc.compare import (
    differences_table,
    over_seeds,
    paired_dice_differences,
    parse_seeds,
    seed_run,
    seeded_preset,
    seeds_table,
)
from mgcc.errors import UsageError
from mgcc.presets import load_preset
from mgcc.stages import Run


def write_scores(path, scores: dict[str, float]):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "class", "dice", "iou", "hd95"])
        writer.writeheader()
        for image, dice in scores.items():
            writer.writerow({"image": image, "class": "benign", "dice": dice, "iou": dice, "hd95": 1.0})
    return path


def test_paired_differences_are_per_image_with_an_interval(tmp_path):
    images = [f"img_{i:03d}.png" for i in range(60)]
    base = write_scores(tmp_path / "base.csv", {k: 0.5 for k in images})
    # better on 40 images by 0.2, worse on 20 by 0.1: mean +0.1
    better = write_scores(tmp_path / "better.csv", {k: 0.7 if i < 40 else 0.4 for i, k in enumerate(images)})
    same = write_scores(tmp_path / "same.csv", {k: 0.5 for k in reversed(images)})  # row order does not matter
    result = paired_dice_differences({"base": [base], "better": [better], "same": [same]}, "base")
    assert set(result) == {"better", "same"}
    assert result["better"]["mean"] == pytest.approx(0.1)
    assert result["better"]["ci95"][0] < 0.1 < result["better"]["ci95"][1] and result["better"]["ci95"][0] > 0
    assert (result["better"]["better"], result["better"]["worse"], result["better"]["n"]) == (40, 20, 60)
    assert result["same"] == {"mean": 0.0, "ci95": [0.0, 0.0], "n": 60, "better": 0, "worse": 0}
    assert "| better | +0.1000 [" in differences_table(result, "base")


def test_different_test_sets_are_refused(tmp_path):
    base = write_scores(tmp_path / "base.csv", {"a.png": 0.5, "b.png": 0.5})
    other = write_scores(tmp_path / "other.csv", {"a.png": 0.5, "c.png": 0.5})
    with pytest.raises(ValueError, match="other.csv and .*base.csv do not score the same test images"):
        paired_dice_differences({"base": [base], "other": [other]}, "base")


def test_differences_pool_seeds_and_resample_within_each(tmp_path):
    images = [f"img_{i:02d}.png" for i in range(20)]
    base = [write_scores(tmp_path / f"base{s}.csv", {k: 0.5 for k in images}) for s in range(2)]
    # seed 0: +0.2 on every image; seed 1: no change. Pooled mean +0.1; a bootstrap within seeds keeps
    # each seed's share, so the interval is a point; one that pooled images across seeds would not be.
    ours = [
        write_scores(tmp_path / "ours0.csv", {k: 0.7 for k in images}),
        write_scores(tmp_path / "ours1.csv", {k: 0.5 for k in images}),
    ]
    result = paired_dice_differences({"base": base, "ours": ours}, "base")["ours"]
    assert result["mean"] == pytest.approx(0.1) and result["n"] == 40
    assert result["ci95"] == pytest.approx([0.1, 0.1])
    assert (result["better"], result["worse"]) == (20, 0)


def test_seeds_parse_and_set_split_generator_and_training():
    assert parse_seeds(None, 0) == [0]
    assert parse_seeds("0,1,2", 0) == parse_seeds((0, 1, 2), 0) == [0, 1, 2]
    assert parse_seeds(3, 0) == [3]
    for bad in ("0,x", "1,1", "-1"):
        with pytest.raises(UsageError, match="--seeds"):
            parse_seeds(bad, 0)
    preset = load_preset("demo")
    spec = seeded_preset(preset, 2)
    assert (spec["data"]["seed"], spec["ldm"]["sample"]["seed"], spec["segmentation"]["common"]["seed"]) == (2, 2, 2)
    assert preset["data"]["seed"] == 0  # the preset itself is not changed
    base = Run(preset, Path("/tmp/out"))
    assert seed_run(base, 0).out == Path("/tmp/out") and seed_run(base, 2).out == Path("/tmp/out/seed-2")


def test_summary_over_seeds_is_the_mean_and_sample_std_of_the_seed_means():
    def result(dice):
        return {
            "dice": {"mean": dice, "std": 0.3},
            "iou": {"mean": dice - 0.1, "std": 0.3},
            "hd95": {"mean": 9.0, "std": 1.0},
            "n": 10,
        }

    per_seed = {0: {"a": result(0.6)}, 1: {"a": result(0.7)}, 2: {"a": result(0.8)}}
    summary = over_seeds(per_seed, {0: {"a": 10.0}, 1: {"a": 20.0}, 2: {"a": 30.0}})
    assert summary["a"]["dice"]["mean"] == pytest.approx(0.7) and summary["a"]["dice"]["std"] == pytest.approx(0.1)
    assert summary["a"]["training_seconds"] == pytest.approx(20.0)
    assert "| a | 0.7000 ± 0.1000 |" in seeds_table(summary, [0, 1, 2])
    single = over_seeds({0: {"a": result(0.6)}}, {0: {"a": 10.0}})
    assert single["a"]["dice"]["std"] is None and "| a | 0.6000 |" in seeds_table(single, [0])


def test_every_variant_is_in_a_folder_named_after_it_and_the_runs_own_variant_is_mgcc_runs_stage(tmp_path):
    """With busi-cpu, `mgcc run` trains mgcc-synthetic: `mgcc compare` names its folders as every other variant's,
    and runs it with the very stage `mgcc run` runs (same fingerprint), so it is not trained twice."""
    from mgcc.compare import plan
    from mgcc.pipeline import run_stages
    from mgcc.stages import fingerprint_parts
    from mgcc.variants import run_variant

    run = Run(load_preset("busi-cpu"), tmp_path)
    stages = {s.name: s for s in plan(run, ["supervised", "mgcc-real", "mgcc-synthetic"])}
    assert [name for name in stages if "-" in name] == [
        "segmentation-supervised",
        "evaluate-supervised",
        "segmentation-mgcc-real",
        "evaluate-mgcc-real",
        "segmentation-mgcc-synthetic",
        "evaluate-mgcc-synthetic",
    ]
    own = {s.name: s for s in run_stages(run_variant(run.preset)).values()}
    for name in ("segmentation-mgcc-synthetic", "evaluate-mgcc-synthetic"):
        assert fingerprint_parts(run, stages[name]) == fingerprint_parts(run, own[name])
    assert fingerprint_parts(run, stages["segmentation-mgcc-real"]) != fingerprint_parts(
        run, own["segmentation-mgcc-synthetic"]
    )


@pytest.mark.parametrize(
    "variants, generator",
    [
        ("supervised,mgcc-labeled,mgcc-real", False),
        ("supervised,mgcc-synthetic", True),
        ("mgcc-real,mgcc-synthetic-pairs", True),
    ],
)
def test_the_generator_trains_only_for_variants_that_read_its_samples(tmp_path, monkeypatch, variants, generator):
    import mgcc.compare

    class Planned(Exception):
        pass

    planned = []

    def plan(run, stages):
        planned.extend(stage.name for stage in stages)
        raise Planned

    monkeypatch.setattr(mgcc.compare, "execute_stages", plan)
    with pytest.raises(Planned):
        mgcc.compare.compare("demo", out=str(tmp_path), variants=variants)
    expected = ["prepare", "autoencoder", "diffusion", "sample", "quality"] if generator else ["prepare"]
    assert planned[: len(expected)] == expected
    assert ("sample" in planned) == generator


def test_the_jobs_keep_the_generator_and_its_readers_in_one_chain(tmp_path):
    """`mgcc compare --jobs N`: the variants that read the samples run after the generator, in its chain; every
    other variant is a chain of its own; prepare runs before any chain."""
    from mgcc.compare import job_groups, plan
    from mgcc.pipeline import make_run

    (tmp_path / "data").mkdir()
    base = make_run(load_preset("busi-cpu"), str(tmp_path / "data"), str(tmp_path / "out"), {})
    names = ["supervised", "mgcc-real", "mgcc-synthetic"]
    assert job_groups(base, plan(base, names), names) == {
        "generator": [
            "autoencoder",
            "diffusion",
            "sample",
            "quality",
            "segmentation-mgcc-synthetic",
            "evaluate-mgcc-synthetic",
        ],
        "supervised": ["segmentation-supervised", "evaluate-supervised"],
        "mgcc-real": ["segmentation-mgcc-real", "evaluate-mgcc-real"],
    }
    names = ["supervised", "mgcc-labeled"]
    assert job_groups(base, plan(base, names), names) == {
        "supervised": ["segmentation-supervised", "evaluate-supervised"],
        "mgcc-labeled": ["segmentation-mgcc-labeled", "evaluate-mgcc-labeled"],
    }


def test_jobs_below_one_are_refused_before_anything_is_written(tmp_path, capsys):
    from mgcc.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["compare", "--preset", "demo", "--out", str(tmp_path / "out"), "--jobs", "0"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == "mgcc compare: error: --jobs 0: must be 1 or more"
    assert not (tmp_path / "out").exists()


def test_the_comparison_figure_shows_every_seed_and_difference(tmp_path):
    from mgcc.figures import plot_comparison

    images = [f"img_{i}.png" for i in range(20)]
    paths = {
        name: [
            write_scores(tmp_path / f"{name}-{seed}.csv", {k: value + 0.01 * seed for k in images}) for seed in (0, 3)
        ]
        for name, value in (("base", 0.5), ("better", 0.6))
    }
    summaries = {
        seed: {
            name: {m: {"mean": value + 0.01 * seed} for m in ("dice", "iou", "hd95")}
            for name, value in (("base", 0.5), ("better", 0.6))
        }
        for seed in (0, 3)
    }
    summary = over_seeds(summaries, {0: {"base": 1.0, "better": 2.0}, 3: {"base": 1.0, "better": 2.0}})
    out = plot_comparison(summary, [0, 3], paired_dice_differences(paths, "base"), "base", tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_the_table_also_measures_the_unlabeled_images_against_the_decoders_alone(tmp_path):
    """`tabulate`: differences to the first variant, and to `mgcc-labeled` for the variants that add unlabeled
    images; the figure beside the table."""
    import json

    from mgcc.compare import tabulate
    from mgcc.pipeline import make_run

    names = ["supervised", "mgcc-labeled", "mgcc-real"]
    (tmp_path / "data").mkdir()
    base = make_run(load_preset("busi-cpu"), str(tmp_path / "data"), str(tmp_path / "out"), {})
    runs = {seed: seed_run(base, seed) for seed in (0, 1)}
    images = [f"img_{i}.png" for i in range(30)]
    for seed, run in runs.items():
        for name, value in zip(names, (0.5, 0.6, 0.7), strict=True):
            train, evaluate = f"segmentation-{name}", f"evaluate-{name}"
            (run.folder(train)).mkdir(parents=True)
            (run.folder(train) / "stage.json").write_text(json.dumps({"name": train, "seconds": 10.0}))
            (run.folder(evaluate) / "evaluation").mkdir(parents=True)
            write_scores(run.folder(evaluate) / "evaluation" / "per_image.csv", {k: value for k in images})
            (run.folder(evaluate) / "evaluation" / "summary.json").write_text(
                json.dumps({m: {"mean": value + seed / 100, "std": 0.1} for m in ("dice", "iou", "hd95")} | {"n": 30})
            )
    tabulate(base, runs, names)
    report = json.loads((base.folder("compare") / "compare.json").read_text())
    assert report["paired_dice_differences"]["mgcc-real"]["mean"] == pytest.approx(0.2)
    assert set(report["paired_dice_differences_to_ablation"]) == {"mgcc-real"}
    assert report["paired_dice_differences_to_ablation"]["mgcc-real"]["mean"] == pytest.approx(0.1)
    assert "## Against `mgcc-labeled`" in (base.folder("compare") / "compare.md").read_text()
    assert (base.folder("compare") / "compare.png").stat().st_size > 10_000


def test_with_jobs_each_seed_is_prepared_first_then_its_chains_run_as_jobs(tmp_path, monkeypatch):
    from mgcc import compare

    calls = []
    monkeypatch.setattr(
        compare, "execute_stages", lambda run, stages: calls.append((run.out, [s.name for s in stages]))
    )
    monkeypatch.setattr(compare, "run_jobs", lambda jobs, plan, count, logs: calls.append((jobs, plan(), count, logs)))
    monkeypatch.setattr(compare, "tabulate", lambda base, runs, names: calls.append("tabulate"))
    out = tmp_path / "out"
    compare.compare("busi-cpu", None, str(out), "supervised,mgcc-synthetic", "0,1", jobs=4)
    assert calls[:2] == [(out, ["prepare"]), (out / "seed-1", ["prepare"])]
    jobs, stages, count, logs = calls[2]
    assert [(job.name, job.run.out, job.stages[-1]) for job in jobs] == [
        ("seed-0-generator", out, "evaluate-mgcc-synthetic"),
        ("seed-0-supervised", out, "evaluate-supervised"),
        ("seed-1-generator", out / "seed-1", "evaluate-mgcc-synthetic"),
        ("seed-1-supervised", out / "seed-1", "evaluate-supervised"),
    ]
    assert stages[0].name == "prepare" and (count, logs) == (4, out / "compare" / "jobs")
    assert calls[3:] == ["tabulate"]
