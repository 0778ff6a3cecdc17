"""Learning: the tuned CartPole jobs solve or clearly improve the task (fixed seeds)."""

from pathlib import Path

import pytest

from rl import results

pytestmark = pytest.mark.slow  # minutes of training; README's test command runs them, -m "not slow" skips them
REPO = Path(__file__).resolve().parent.parent


def train(run_dir, *overrides):
    results.train(run_dir, *overrides, cwd=REPO, timeout=1200)
    return results.summary(run_dir)


def test_default_job_solves_cartpole(tmp_path):
    summary = train(tmp_path / "default")
    assert summary["env"] == "CartPole-v1" and summary["algo"] == "ppo"
    assert summary["eval_episodes"] == 5
    assert summary["eval_return_mean"] >= 475, summary


def test_trpo_solves_cartpole_within_its_budget(tmp_path):
    summary = train(tmp_path / "trpo", "algo=trpo")
    assert summary["algo"] == "trpo" and summary["total_timesteps"] <= 100_000
    assert summary["eval_return_mean"] >= 475, summary


def test_npg_improves_cartpole_by_a_clear_margin(tmp_path):
    run_dir = tmp_path / "npg"
    summary = train(run_dir, "algo=npg")
    (returns,) = results.values(run_dir, "charts/episodic_return")
    first, last = sum(returns[:20]) / 20, sum(returns[-20:]) / 20
    assert first < 60, first  # where it started: a near-random policy
    assert last >= first + 150, (first, last)
    assert summary["eval_return_mean"] >= 300, summary
