"""Checkpoints: SIGINT then resume, refusing corrupt or malicious files, and rl.load()."""

import json
import os
import shutil
import signal
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rl
from rl import checkpoint
from rl.results import scalars
from tests.reproducibility.runs import (
    final_parameters,
    finish,
    folder_digest,
    launch,
    run_all,
    same_parameters,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them

TOTAL = 30720  # 120 PPO iterations on CartPole: long enough to interrupt mid-run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt") / "finished"
    results = run_all({"finished": (run_dir, ["total_timesteps=2560", "eval_episodes=3", "seed=3"])})
    assert results["finished"][0] == 0, results["finished"][2]
    return run_dir


def test_sigint_mid_run_checkpoints_and_resume_finishes_the_same_run(tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    overrides = [f"total_timesteps={TOTAL}", "eval_episodes=2", "checkpoint_every=5", "seed=5"]
    process = launch(interrupted, *overrides)
    wait_for_checkpoint(process, interrupted)
    latest = interrupted / "checkpoints" / "latest"
    process.send_signal(signal.SIGINT)
    rc, out, err = finish(process)
    assert rc == 0, err[-2000:]
    assert "stopped (SIGINT)" in out
    assert not (interrupted / "summary.json").exists()
    stopped_step = int(latest.read_text().strip()[len("step_"):-len(".pt")])
    assert 0 < stopped_step < TOTAL

    results = run_all({"resume": (interrupted, [f"resume={interrupted}"]), "reference": (reference, overrides)})
    for name, (rc, _, err) in results.items():
        assert rc == 0, (name, err[-2000:])
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["total_timesteps"] == TOTAL
    # Stopping happens between iterations, so the interrupted-and-resumed run is the uninterrupted one.
    assert scalars(interrupted) == scalars(reference)
    assert same_parameters(final_parameters(interrupted), final_parameters(reference))


def _resume_refused(run_dir):
    before = folder_digest(run_dir)
    rc, out, err = finish(launch(run_dir, f"resume={run_dir}"))
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "checkpoint" in lines[0] and "Traceback" not in err, err
    assert folder_digest(run_dir) == before
    return lines[0]


def test_truncated_checkpoint_is_refused_without_side_effects(finished_run, tmp_path):
    run_dir = tmp_path / "truncated"
    shutil.copytree(finished_run, run_dir)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    _resume_refused(run_dir)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_runs_code_on_unpickling_is_refused(finished_run, tmp_path):
    run_dir = tmp_path / "malicious"
    shutil.copytree(finished_run, run_dir)
    marker = tmp_path / "pwned"
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    torch.save({"format_version": 1, "agent": _Exploit(marker)}, latest)
    message = _resume_refused(run_dir)
    assert not marker.exists(), message


def test_foreign_file_is_refused(finished_run, tmp_path):
    run_dir = tmp_path / "foreign"
    shutil.copytree(finished_run, run_dir)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    torch.save({"weights": torch.zeros(3)}, latest)  # loads safely, but is not ours
    _resume_refused(run_dir)


def test_loaded_policy_reproduces_the_recorded_evaluation(finished_run):
    summary = json.loads((Path(finished_run) / "summary.json").read_text())
    policy = rl.load(finished_run)
    returns = []
    for episode in range(summary["eval_episodes"]):  # the evaluation's seeds: seed + 10000 + index
        env = gym.make(summary["env"])
        obs, _ = env.reset(seed=summary["seed"] + 10_000 + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(policy.act(obs)))
            total += reward
            done = terminated or truncated
        returns.append(total)
    assert np.mean(returns) == summary["eval_return_mean"]
    assert np.std(returns) == pytest.approx(summary["eval_return_std"], abs=1e-12)


def test_checkpoint_with_the_right_keys_but_another_model_is_refused(finished_run, tmp_path):
    run_dir = tmp_path / "mismatch"
    shutil.copytree(finished_run, run_dir)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    state = torch.load(latest, weights_only=True)
    state["agent"] = {"actor.net.0.weight": torch.zeros(7, 7)}  # another architecture
    state["digest"] = checkpoint.payload_digest(state)  # sealed again: only the model check can refuse it
    torch.save(state, latest)
    assert "does not fit" in _resume_refused(run_dir)


def test_only_the_newest_checkpoints_are_kept_and_latest_names_the_last(tmp_path):
    run_dir = tmp_path / "keep"
    results = run_all({"keep": (run_dir, ["total_timesteps=5120", "checkpoint_every=2", "checkpoint_keep=3",
                                          "eval_episodes=0"])})
    assert results["keep"][0] == 0, results["keep"][2]
    files = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert files == ["step_000000004096.pt", "step_000000004608.pt", "step_000000005120.pt"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000000005120.pt"
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
