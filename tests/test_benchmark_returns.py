"""scripts/benchmark_returns.py on a tiny CartPole matrix: result layout, curves, skip and resume."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rl import results
from tests import scripts_path

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them

REPO = Path(__file__).resolve().parent.parent
RUNNER = scripts_path.SCRIPTS / "benchmark_returns.py"
# PPO on CartPole iterates 8 envs x 32 steps: 8 iterations, evaluated at 2, 4, 6, 8.
OVERRIDES = ["total_timesteps=2048", "eval_every=2", "eval_episodes=2", "checkpoint_every=1"]


def run_runner(*args):
    result = subprocess.run([sys.executable, str(RUNNER), *args, "--parallel", "1"], cwd=REPO, capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out, runs = root / "out", root / "runs"
    args = ["--envs", "CartPole-v1", "--algos", "ppo", "trpo", "--seeds", "1", "2", "--out", str(out),
            "--runs-dir", str(runs), *OVERRIDES]
    first = run_runner(*args)
    return out, runs, args, first


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_run_of_the_matrix_leaves_a_summary_a_curve_and_its_config(matrix):
    out, runs, _, log = matrix
    for algo in ("ppo", "trpo"):
        for seed in (1, 2):
            result = out / "CartPole-v1" / algo / f"seed{seed}"
            summary = json.loads((result / "summary.json").read_text())
            assert (summary["env"], summary["algo"], summary["seed"], summary["cell"]) == ("CartPole-v1", algo, seed, algo)
            assert "total_timesteps=2048" in summary["command"] and summary["resumed"] is False
            assert (result / "config.yaml").read_text() == (runs / "CartPole-v1" / algo / f"seed{seed}" / ".hydra" /
                                                            "config.yaml").read_text()
            assert f"done  CartPole-v1/{algo}/seed{seed}" in log


def test_curve_matches_the_runs_tensorboard_and_summary(matrix):
    out, runs, _, _ = matrix
    result, run_dir = out / "CartPole-v1" / "ppo" / "seed1", runs / "CartPole-v1" / "ppo" / "seed1"
    rows = read_rows(result / "curve.csv")
    assert list(rows[0]) == ["step", "train_return", "eval_return", "eval_return_std", "train_length", "eval_length"]
    assert [int(r["step"]) for r in rows] == [256 * i for i in range(1, 9)]

    evaluations = dict(tensorboard_scalars(run_dir, "eval/return"))
    training = tensorboard_scalars(run_dir, "charts/episodic_return")
    assert sorted(evaluations) == [512, 1024, 1536, 2048]
    for row in rows:
        step = int(row["step"])
        if step in evaluations:
            assert float(row["eval_return"]) == pytest.approx(evaluations[step], rel=1e-5)
        else:
            assert row["eval_return"] == ""
        episodes = [value for at, value in training if at == step]
        if episodes:
            assert float(row["train_return"]) == pytest.approx(sum(episodes) / len(episodes), rel=1e-5)
        # CartPole pays 1 per step, so an episode's length is its return: an independent check of the lengths
        for length, episode_return in (("train_length", "train_return"), ("eval_length", "eval_return")):
            assert (row[length] == "") == (row[episode_return] == "")
            if row[length]:
                assert float(row[length]) == pytest.approx(float(row[episode_return]), rel=1e-5)

    summary = json.loads((result / "summary.json").read_text())
    ordered = [evaluations[s] for s in sorted(evaluations)]
    assert summary["eval_points"] == 4
    assert summary["eval_return_last5_mean"] == pytest.approx(sum(ordered) / 4, rel=1e-5)  # fewer than 5 points
    assert summary["eval_return_mean"] == pytest.approx(ordered[-1], rel=1e-5)


def test_a_second_invocation_skips_what_is_done(matrix):
    out, _, args, _ = matrix
    before = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    log = run_runner(*args)
    assert log.count("skip") == 4 and "start" not in log
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == before


def test_a_run_stopped_midway_is_resumed(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    run_dir = runs / "CartPole-v1" / "ppo-half" / "seed3"
    results.train(run_dir, "seed=3", *OVERRIDES, "stop_after_steps=1024", cwd=REPO, timeout=1200)
    log = run_runner("--envs", "CartPole-v1", "--algos", "ppo", "--seeds", "3", "--name", "half", "--out", str(out),
                     "--runs-dir", str(runs), *OVERRIDES)
    assert "start CartPole-v1/ppo-half/seed3 (resuming)" in log
    summary = json.loads((out / "CartPole-v1" / "ppo-half" / "seed3" / "summary.json").read_text())
    assert summary["resumed"] is True and summary["total_timesteps"] == 2048 and summary["cell"] == "ppo-half"
    assert len(read_rows(out / "CartPole-v1" / "ppo-half" / "seed3" / "curve.csv")) == 8


def test_a_run_stopped_under_the_runner_is_reported_and_left_to_resume(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    log = run_runner("--envs", "CartPole-v1", "--algos", "ppo", "--seeds", "4", "--out", str(out),
                     "--runs-dir", str(runs), *OVERRIDES, "stop_after_steps=1024")
    assert "stop  CartPole-v1/ppo/seed4: stopped at its checkpoint" in log
    assert not (out / "CartPole-v1" / "ppo" / "seed4").exists()
    assert (runs / "CartPole-v1" / "ppo" / "seed4" / "checkpoints" / "latest").exists()


def test_matrix_file_orders_jobs_seed_first(tmp_path):
    jobs = scripts_path.script("benchmark_returns").jobs_from_matrix({"seeds": [1, 2], "cells": [
        {"env": "A", "algo": "trpo", "name": "x", "overrides": ["algo.max_kl=0.03"]},
        {"env": "A", "algo": "ppo", "seeds": [2]}]})
    assert [(j["algo"], j["name"], j["seed"]) for j in jobs] == [("trpo", "x", 1), ("trpo", "x", 2), ("ppo", None, 2)]
    assert jobs[0]["overrides"] == ["algo.max_kl=0.03"]
    assert jobs[0]["folder"] == "A"


def test_a_family_cell_names_its_env_id_and_its_folder_after_it():
    [job] = scripts_path.script("benchmark_returns").jobs_from_matrix({"seeds": [1], "cells": [
        {"env": "minatar", "id": "MinAtar/Breakout-v1", "algo": "ppo", "overrides": ["algo.num_steps=64"]}]})
    assert job["overrides"] == ["env.id=MinAtar/Breakout-v1", "algo.num_steps=64"]
    assert job["folder"] == "MinAtar-Breakout-v1"
    [sb3] = scripts_path.script("benchmark_returns").jobs_from_matrix({"seeds": [1], "cells": [
        {"env": "minigrid", "id": "MiniGrid-DoorKey-5x5-v0", "algo": "sb3-ppo", "overrides": ["--wrapper=w:W"]}]})
    cmd = scripts_path.script("benchmark_returns").command(sb3, "out")
    assert "--env=MiniGrid-DoorKey-5x5-v0" in cmd and "--wrapper=w:W" in cmd
    assert not any(part.startswith("env.id=") for part in cmd)


def tensorboard_scalars(run_dir, tag):
    """TensorBoard's own reader, not rl.results (which the runner uses): the independent side of the checks."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_stats_keep_what_each_update_logged(matrix):
    out, runs, _, _ = matrix
    for algo, own_tag in (("ppo", "losses/clipfrac"), ("trpo", "trpo/cg_residual")):
        rows = read_rows(out / "CartPole-v1" / algo / "seed1" / "stats.csv")
        assert {"losses/entropy", "losses/explained_variance", own_tag} <= set(rows[0])
        logged = tensorboard_scalars(runs / "CartPole-v1" / algo / "seed1", own_tag)
        assert [(int(r["step"]), pytest.approx(float(r[own_tag]), rel=1e-5)) for r in rows] == logged


def test_recollect_rebuilds_results_from_the_run_folders(matrix):
    out, _, args, _ = matrix
    result = out / "CartPole-v1" / "trpo" / "seed2"
    stats, summary = (result / "stats.csv").read_text(), json.loads((result / "summary.json").read_text())
    (result / "stats.csv").unlink()
    dry = run_runner(*args, "--recollect", "--dry-run")
    assert dry.count("would collect") == 4 and not (result / "stats.csv").exists()  # a dry run writes nothing
    log = run_runner(*args, "--recollect")
    assert log.count("collected again") == 4 and "start" not in log
    assert (result / "stats.csv").read_text() == stats
    assert json.loads((result / "summary.json").read_text()) == summary


def run_table(*args):
    result = subprocess.run([sys.executable, str(scripts_path.SCRIPTS / "benchmark_table.py"), *map(str, args)],
                            cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


def test_table_gives_each_cells_mean_and_spread_over_seeds(matrix):
    out, _, _, _ = matrix
    finals = [json.loads((out / "CartPole-v1" / "trpo" / f"seed{s}" / "summary.json").read_text())["eval_return_mean"]
              for s in (1, 2)]
    mean, std = sum(finals) / 2, abs(finals[0] - finals[1]) / 2
    row = next(line for line in run_table(out) if "| trpo |" in line).split(" | ")
    shown = [f"{x:,.0f}" if abs(mean) >= 100 else f"{x:.1f}" for x in (mean, std)]  # one decimal below 100
    assert row[2:4] == ["2", f"{shown[0]} +/- {shown[1]}"]


def test_stats_table_averages_each_tag_over_the_window_before_each_point(matrix):
    out, runs, _, _ = matrix
    lines = run_table(out, "--cells", "trpo", "--seeds", "1", "--stats", "losses/entropy", "--at", "0.5", "1",
                      "--window", "0.25")
    entropy = tensorboard_scalars(runs / "CartPole-v1" / "trpo" / "seed1", "losses/entropy")
    total = json.loads((out / "CartPole-v1" / "trpo" / "seed1" / "summary.json").read_text())["total_timesteps"]
    expected = []
    for end in (0.5 * total, total):
        values = [v for step, v in entropy if end - 0.25 * total < step <= end]
        expected.append(f"{sum(values) / len(values):.4g}")
    row = next(line for line in lines if "| losses/entropy |" in line)
    assert row == f"| CartPole-v1 | trpo | 1 | losses/entropy | {expected[0]} | {expected[1]} |"
    assert any("| eval_return |" in line for line in lines)


def test_seeds_pick_from_a_matrix_file(tmp_path):
    matrix = tmp_path / "m.json"
    matrix.write_text(json.dumps({"cells": [{"env": "CartPole-v1", "algo": "ppo", "seeds": [1, 2, 3]},
                                            {"env": "CartPole-v1", "algo": "trpo", "seeds": [4]}]}))
    log = run_runner("--matrix", str(matrix), "--seeds", "2", "4", "--out", str(tmp_path / "out"), "--dry-run")
    assert [line.split(":")[0] for line in log.splitlines()] == ["would run CartPole-v1/ppo/seed2",
                                                                 "would run CartPole-v1/trpo/seed4"]


def test_an_sb3_cell_keeps_its_own_training_statistics(tmp_path):
    """sb3_baseline.py's run folder: summary, curve and a TensorBoard folder; stats.csv keeps its train/* tags."""
    from torch.utils.tensorboard import SummaryWriter

    runner = scripts_path.script("benchmark_returns")
    run_dir, result_dir = tmp_path / "run", tmp_path / "result"
    (run_dir / "tensorboard").mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"env": "Hopper-v4", "algo": "sb3-trpo", "seed": 5}))
    (run_dir / "curve.csv").write_text("step,train_return,eval_return,eval_return_std,train_length,eval_length\n"
                                       "2048,300.5,,,120,\n4096,,800.25,3.5,,250\n")
    writer = SummaryWriter(str(run_dir / "tensorboard" / "TRPO_1"))
    logged = {2048: {"train/std": 0.9, "train/kl_divergence_loss": 0.005, "rollout/ep_len_mean": 120.0},
              4096: {"train/std": 0.8, "train/kl_divergence_loss": 0.006, "rollout/ep_len_mean": 140.0}}
    for step, values in logged.items():
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
    writer.close()
    job = {"env": "Hopper-v4", "algo": "sb3-trpo", "name": None, "overrides": [], "seed": 5}
    runner.collect_result(job, run_dir, result_dir, ["scripts/sb3_baseline.py", "--seed=5"], resumed=False)
    rows = read_rows(result_dir / "stats.csv")
    assert list(rows[0]) == ["step", "train/std", "train/kl_divergence_loss"]  # only what an update logged
    assert [(int(r["step"]), float(r["train/std"]), float(r["train/kl_divergence_loss"])) for r in rows] == \
        [(2048, pytest.approx(0.9), pytest.approx(0.005)), (4096, pytest.approx(0.8), pytest.approx(0.006))]
    curve = read_rows(result_dir / "curve.csv")
    assert [(r["train_length"], r["eval_length"]) for r in curve] == [("120", ""), ("", "250")]
