"""Slow runs of the MGCC segmentation bundle: exact resume after a kill, torchrun (gloo, 2 processes),
and the three baselines. Marked `integration` (run by `make test`)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ultrasound_mgcc_segmentation"
TINY = ["--spatial_size", "[64,64]", "--base_channels", "8", "--num_workers", "0", "--show_progress", "false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}

pytestmark = pytest.mark.integration


def configs(*names: str) -> str:
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


def run(cmd: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=BUNDLE, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == expect, f"{cmd[:6]} returned {proc.returncode}:\n{proc.stderr[-5000:]}"
    return proc


def train_cmd(config: str, data: Path, root: Path, *extra: str, launcher=(sys.executable,)) -> list[str]:
    return [
        *launcher,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config,
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(root / "eval"),
        "--ckpt_dir",
        str(root / "models"),
        *TINY,
        *extra,
    ]


def history(root: Path) -> list[dict]:
    with open(root / "eval" / "training_history.csv", newline="") as f:
        return list(csv.DictReader(f))


def best_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The evaluator's "Key metric: ... best value: ... at epoch: ..." log lines, without their time stamps."""
    return [line.split(" - ")[-1] for line in (proc.stdout + proc.stderr).splitlines() if "best value" in line]


@pytest.mark.precision
def test_resume_after_a_kill_reaches_the_same_result(prepared_phantom, tmp_path):
    schedule = ["--max_iterations", "12", "--val_interval", "4"]
    straight = run(train_cmd("configs/train.json", prepared_phantom, tmp_path / "straight", *schedule))

    # the same run, hard-killed (os._exit, no clean-up) right after the checkpoint of epoch 2 (iteration 8)
    kill = tmp_path / "kill.json"
    kill.write_text(
        json.dumps(
            {
                "run": [
                    "$[h.attach(@train#trainer) for h in @train#resume_handlers]",
                    "$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once=2), "
                    "lambda e: os._exit(3))",
                    "$@train#trainer.run()",
                ]
            }
        )
    )
    killed = tmp_path / "killed"
    run(train_cmd(configs("configs/train.json", str(kill)), prepared_phantom, killed, *schedule), expect=3)
    assert max(int(r["iteration"]) for r in history(killed)) == 8
    resumed = run(train_cmd("configs/train.json", prepared_phantom, killed, *schedule, "--resume", "true"))

    assert history(killed) == history(tmp_path / "straight")  # every loss, weight, lr and val Dice, bit for bit
    # the log's best result is the whole run's, the validations before the kill included
    assert best_lines(resumed)[-1] == best_lines(straight)[-1]
    for name in ("model.pt", "checkpoint_epoch=3.pt"):
        a = torch.load(tmp_path / "straight" / "models" / name, weights_only=True)
        b = torch.load(killed / "models" / name, weights_only=True)
        a, b = (x.get("network", x) for x in (a, b))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_without_a_checkpoint_names_the_problem(prepared_phantom, tmp_path):
    proc = run(
        train_cmd(
            "configs/train.json",
            prepared_phantom,
            tmp_path,
            "--max_iterations",
            "4",
            "--val_interval",
            "2",
            "--resume",
            "true",
        ),
        expect=1,
    )
    assert "no checkpoint_epoch=<n>.pt checkpoint in" in proc.stderr


def test_torchrun_gloo_two_processes(prepared_phantom, tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2")
    cmd = train_cmd(
        configs("configs/train.json", "configs/multi_gpu_train.json"),
        prepared_phantom,
        tmp_path,
        "--max_iterations",
        "4",
        "--val_interval",
        "2",
        launcher=launcher,
    )
    run(cmd)
    rows = history(tmp_path)
    assert [int(r["iteration"]) for r in rows if r["loss"]] == [1, 2, 3, 4]  # written once, by rank 0
    assert len([r for r in rows if r["val_dice"]]) == 2
    assert (tmp_path / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["network"])  # saved unwrapped from DDP


@pytest.mark.parametrize("baseline", ["train_supervised", "train_cct", "train_mean_teacher"])
def test_baselines_train_with_the_shared_settings(baseline, prepared_phantom, tmp_path):
    cmd = train_cmd(
        configs("configs/train.json", f"configs/{baseline}.json"),
        prepared_phantom,
        tmp_path,
        "--max_iterations",
        "4",
        "--val_interval",
        "2",
    )
    run(cmd)
    rows = [r for r in history(tmp_path) if r["loss"]]
    assert len(rows) == 4
    consistency = [float(r["consistency_loss"]) for r in rows]
    if baseline == "train_supervised":
        assert all(c == 0.0 for c in consistency)
        assert all(float(r["loss"]) == float(r["supervised_loss"]) for r in rows)
    else:
        assert all(c > 0.0 for c in consistency)
    # every baseline's model.pt loads into the inference network (same weight layout)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "main_decoder.head.weight" in state and "aux_decoders.0.head.weight" in state
    if baseline == "train_mean_teacher":
        ckpt = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
        assert "teacher" in ckpt


def test_labeled_only_ablation_trains_the_auxiliary_decoders_without_unlabeled_images(prepared_phantom, tmp_path):
    """`train_labeled_only.json` (the `mgcc-labeled` variant): no unlabeled batch and no consistency, but the
    auxiliary decoders learn from the labeled images, where supervised-only leaves them at their initial weights."""
    schedule = ["--max_iterations", "4", "--val_interval", "2"]
    for name in ("train_supervised", "train_labeled_only"):
        run(
            train_cmd(
                configs("configs/train.json", f"configs/{name}.json"), prepared_phantom, tmp_path / name, *schedule
            )
        )
        rows = [r for r in history(tmp_path / name) if r["loss"]]
        assert len(rows) == 4
        assert all(float(r["consistency_loss"]) == 0.0 and r["loss"] == r["supervised_loss"] for r in rows)
    supervised, ablation = (
        torch.load(tmp_path / n / "models" / "model.pt", weights_only=True)
        for n in ("train_supervised", "train_labeled_only")
    )
    aux = [k for k in supervised if k.startswith("aux_decoders.")]
    assert aux and all(not torch.equal(supervised[k], ablation[k]) for k in aux if k.endswith("head.weight"))


def test_benchmark_script_writes_json_and_markdown(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_segmentation.py"
    out = tmp_path / "bench" / "seg"
    not_a_checkout = tmp_path / "not-a-checkout"
    not_a_checkout.mkdir()
    run(
        [
            sys.executable,
            str(script),
            "--out",
            str(out),
            "--sizes",
            "32",
            "--widths",
            "16",
            "--modes",
            "eager",
            "checkpoint_aux",
            "bf16",
            "auto",
            "--iterations",
            "1",
            "--warmup",
            "1",
            "--infer_iterations",
            "2",
            "--threads",
            "1",
            "--rounds",
            "2",
            "--reference",
            str(not_a_checkout),
            "--infer_modes",
            "eager",
            "bf16",
            "auto",
        ]
    )
    report = json.loads(Path(f"{out}.json").read_text())
    assert [r["mode"] for r in report["training"]] == ["reference", "eager", "checkpoint_aux", "bf16", "auto"]
    # `auto` is what the bundle runs by default on this machine, and the report says which precision that was
    from mgcc.bundles import import_bundle_scripts

    inferer = import_bundle_scripts(BUNDLE).inferer
    expected = inferer.AutocastInferer("auto", "cpu", channels_last="auto").precision
    assert report["training"][-1]["precision"] == report["inference"][-1]["precision"] == expected
    assert report["training"][3]["precision"] == "bfloat16 autocast"  # the `bf16` mode: NCHW
    assert report["environment"]["cpu_bfloat16_instructions"] == inferer.cpu_has_native_bfloat16()
    assert f"| 32 | 16 | auto ({expected}) |" in Path(f"{out}.md").read_text()
    reference, *ours = report["training"]
    assert "not found" in reference["error"] and str(not_a_checkout) in reference["error"]
    assert all("error" not in r and r["seconds_per_iteration"] > 0 and r["peak_memory_mib"] > 0 for r in ours)
    assert all(len(r["rounds_seconds_per_iteration"]) == 2 for r in ours)
    assert [r["mode"] for r in report["inference"]] == ["reference", "eager", "bf16", "auto"]
    assert all("error" not in r and r["ms_per_image"] > 0 for r in report["inference"][1:])
    assert "| 32 | 16 | checkpoint_aux |" in Path(f"{out}.md").read_text()


@pytest.mark.precision
def test_compiled_training_computes_what_eager_computes(prepared_phantom, tmp_path):
    """`compile true` (torch.compile of the training forward) changes speed, not the result: with inductor's random
    numbers drawn as in eager mode, every logged loss matches the eager run, and the checkpoint loads unchanged.
    Both run float32 (`--amp false`): with bfloat16 autocast, inductor's fused kernels round differently from eager's
    and the losses part by bfloat16 rounding (a few 1e-3), which is not what this test is about."""
    same_random = tmp_path / "same_random.json"
    same_random.write_text(
        json.dumps(
            {
                "initialize": [
                    "$setattr(torch._inductor.config, 'fallback_random', True)",
                    "$scripts.config.use_compile_cache(@compile_cache_dir) "
                    "if scripts.config.flag(@compile, 'compile') else None",
                    "$monai.utils.set_determinism(seed=@seed)",
                ]
            }
        )
    )
    schedule = ["--max_iterations", "4", "--val_interval", "2", "--amp", "false"]
    for mode in ("eager", "compiled"):
        run(
            train_cmd(
                configs("configs/train.json", str(same_random)),
                prepared_phantom,
                tmp_path / mode,
                *schedule,
                "--compile",
                str(mode == "compiled").lower(),
            )
        )
    eager, compiled = history(tmp_path / "eager"), history(tmp_path / "compiled")
    assert [r["iteration"] for r in eager] == [r["iteration"] for r in compiled]
    for a, b in zip(eager, compiled, strict=True):
        for key in ("loss", "supervised_loss", "consistency_loss"):
            if a.get(key):
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-3, abs=1e-5), (a["iteration"], key)
    state = torch.load(tmp_path / "compiled" / "models" / "model.pt", weights_only=True)
    reference = torch.load(tmp_path / "eager" / "models" / "model.pt", weights_only=True)
    assert state.keys() == reference.keys()  # saved from the plain module: no `_orig_mod.` prefixes
    # the compiled code is kept with the run (`compile_cache_dir`, default <output_dir>/inductor_cache)
    assert any(p.is_file() for p in (tmp_path / "compiled" / "eval" / "inductor_cache").rglob("*"))
    assert not (tmp_path / "eager" / "eval" / "inductor_cache").exists()
