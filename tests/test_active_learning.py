"""The simulated annotation loop (`scripts/simulate_active_learning.py`): which images each strategy labels next,
what the annotator returns, resuming only with the same settings; the whole loop on a tiny run (integration)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "simulate_active_learning.py"


@pytest.fixture(scope="module")
def al():
    spec = importlib.util.spec_from_file_location("simulate_active_learning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


POOL = [{"image": f"/d/images/case_{i}.png"} for i in range(10)]


def test_disagreement_labels_the_highest_scores_and_random_draws_are_seeded(al):
    scores = {f"case_{i}": s for i, s in enumerate([0.1, 0.9, 0.3, 0.8, 0.0, 0.5, 0.2, 0.7, 0.4, 0.6])}
    assert [e["image"] for e in al.choose("disagreement", POOL, scores, 3, 0)] == [
        "/d/images/case_1.png",
        "/d/images/case_3.png",
        "/d/images/case_7.png",
    ]
    first, again, other = (al.choose("random-0", POOL, None, 4, seed) for seed in (1, 1, 2))
    assert first == again and first != other and len({e["image"] for e in first}) == 4


def test_the_annotator_returns_the_prepared_mask_and_refuses_a_pool_image_without_one(al, tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "case_1.png").write_bytes(b"mask")
    entry = al.oracle_label({"image": str(tmp_path / "images" / "case_1.png"), "class": "benign"}, tmp_path)
    assert entry == {
        "image": str(tmp_path / "images" / "case_1.png"),
        "class": "benign",
        "label": str(tmp_path / "labels" / "case_1.png"),
    }
    with pytest.raises(SystemExit, match="case_2.png"):
        al.oracle_label({"image": str(tmp_path / "images" / "case_2.png")}, tmp_path)


def test_a_simulation_resumes_only_with_its_own_settings(al, tmp_path):
    al.check_settings(tmp_path, {"per_round": 16})
    al.check_settings(tmp_path, {"per_round": 16})
    with pytest.raises(SystemExit, match="other settings"):
        al.check_settings(tmp_path, {"per_round": 8})


def test_table_has_one_row_per_round_with_the_random_mean(al):
    def row(r, dice):
        return {"round": r, "labeled": 10 + 2 * r, "dice": dice, "round_seconds": 10.0}

    report = {
        "strategies": {
            "disagreement": [row(0, 0.5), row(1, 0.6)],
            "random-0": [row(0, 0.5), row(1, 0.4)],
            "random-1": [row(0, 0.5), row(1, 0.5)],
        }
    }
    lines = al.tabulate(report).splitlines()
    assert len(lines) == 4
    assert lines[3].startswith("| 1 | 12 | 0.600 | 0.450 ± 0.071 | 0.400, 0.500 |")


def test_strategies_run_at_once_give_the_same_simulation(al, tmp_path, monkeypatch):
    """`--jobs`: the strategies' chains of rounds run in threads; each still starts from round 0 and follows its
    own previous round, so the report is the one of running them one after another."""
    from mgcc.stages import Run

    dataset = tmp_path / "run" / "prepare" / "dataset"
    (dataset / "labels").mkdir(parents=True)
    entries = [{"image": f"images/case_{i}.png"} for i in range(12)]
    for e in entries:
        (dataset / "labels" / Path(e["image"]).name).write_bytes(b"mask")
    (dataset / "datalist.json").write_text(
        json.dumps({"training": entries[:2], "unlabeled": entries[2:], "validation": [], "test": []})
    )

    threads = {}

    def fake_training(run, folder):
        datalist = json.loads((folder / "datalist.json").read_text())
        threads[folder.relative_to(tmp_path).as_posix()] = os.environ.get("OMP_NUM_THREADS")
        return {
            "dice": len(datalist["training"]) / 100,
            "iou": 0.0,
            "hd95": 0.0,
            "training_seconds": 0.0,
            "evaluation_seconds": 0.0,
        }

    def fake_scores(run, folder):  # the previous round's pool, scored by its own size and the image number
        pool = json.loads((folder / "datalist.json").read_text())["unlabeled"]
        return {
            "scores": {Path(e["image"]).stem: (int(Path(e["image"]).stem.split("_")[1]) * len(pool)) % 7 for e in pool},
            "seconds": 0.0,
        }

    monkeypatch.setattr(al, "train_and_evaluate", fake_training)
    monkeypatch.setattr(al, "disagreement_scores", fake_scores)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    run = Run({"name": "x"}, tmp_path / "run")
    one = al.simulate(run, tmp_path / "one", rounds=2, per_round=2, random_draws=3, jobs=1)
    four = al.simulate(run, tmp_path / "four", rounds=2, per_round=2, random_draws=3, jobs=4)
    assert one == four
    # side by side, each training gets its share of the cores (8 // 4); round 0 and one-at-a-time runs all of them
    assert threads["four/round-0"] is None and threads["one/random-1/round-2"] is None
    assert {t for name, t in threads.items() if name.startswith("four/") and name != "four/round-0"} == {"2"}
    assert "OMP_NUM_THREADS" not in os.environ
    picked = {s: [r.get("picked") for r in rows] for s, rows in four["strategies"].items()}
    assert len({str(p) for p in picked.values()}) == 4  # every strategy its own picks
    assert [r["labeled"] for r in four["strategies"]["random-2"]] == [2, 4, 6]
    # round 2 ranks the pool that round 1's model left (8 images), not round 0's
    assert picked["disagreement"] == [None, ["case_2", "case_9"], ["case_5", "case_6"]]


@pytest.mark.integration
def test_the_loop_runs_on_a_tiny_run_and_resumes(tmp_path):
    from mgcc.presets import load_preset

    preset = load_preset("demo")
    preset.pop("name")
    preset["data"]["phantom"].update(n=24, size=48)
    preset["segmentation"]["common"].update(spatial_size=[32, 32], base_channels=4, num_workers=0, show_progress=False)
    preset["segmentation"]["train"].update(max_iterations=4, val_interval=2)
    (tmp_path / "tiny.json").write_text(json.dumps(preset))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mgcc",
            "run",
            "--preset",
            str(tmp_path / "tiny.json"),
            "--out",
            str(run),
            "--stage",
            "prepare",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    command = [
        sys.executable,
        str(SCRIPT),
        "--run",
        str(run),
        "--preset",
        str(tmp_path / "tiny.json"),
        "--rounds",
        "1",
        "--per-round",
        "2",
        "--random-draws",
        "1",
    ]
    first = subprocess.run(command, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = run / "active-learning"
    report = json.loads((out / "active_learning.json").read_text())
    datalist = json.loads((run / "prepare" / "dataset" / "datalist.json").read_text())
    start = len(datalist["training"])
    for strategy in ("disagreement", "random-0"):
        rows = report["strategies"][strategy]
        assert [r["labeled"] for r in rows] == [start, start + 2]
        picked = rows[1]["picked"]
        round_list = json.loads((out / strategy / "round-1" / "datalist.json").read_text())
        assert {Path(e["image"]).stem for e in round_list["training"]} >= set(picked)
        assert not {Path(e["image"]).stem for e in round_list["unlabeled"]} & set(picked)
        assert len(round_list["unlabeled"]) == len(datalist["unlabeled"]) - 2
    scores = json.loads((out / "round-0" / "scoring" / "done.json").read_text())["scores"]
    top = sorted(scores, key=scores.get, reverse=True)[:2]
    assert sorted(report["strategies"]["disagreement"][1]["picked"]) == sorted(top)
    assert (out / "active_learning.png").stat().st_size > 0 and "| 1 |" in (out / "active_learning.md").read_text()

    again = subprocess.run(command, capture_output=True, text=True, env=env)  # everything done: nothing retrains
    assert again.returncode == 0 and "Epoch" not in again.stdout + again.stderr
    assert json.loads((out / "active_learning.json").read_text()) == report
