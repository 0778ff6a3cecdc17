"""Learning: the tuned CartPole jobs solve or clearly improve the task (fixed seeds)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow  # minutes of training; README's test command runs them, -m "not slow" skips them
REPO = Path(__file__).resolve().parent.parent


def train(run_dir, *overrides):
    result = subprocess.run([sys.executable, "-m", "rl.train", f"hydra.run.dir={run_dir}", "progress=false",
                             *overrides], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


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
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    returns = [e.value for e in events.Scalars("charts/episodic_return")]
    first, last = sum(returns[:20]) / 20, sum(returns[-20:]) / 20
    assert first < 60, first  # where it started: a near-random policy
    assert last >= first + 150, (first, last)
    assert summary["eval_return_mean"] >= 300, summary
