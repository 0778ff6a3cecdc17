"""`python -m rl.evaluate`: reproduces the run's own evaluation, picks checkpoints, records video, refuses bad input."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import rl
from rl import results
from rl.evaluate import main as evaluate_main

REPO = Path(__file__).resolve().parent.parent


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evaluate") / "cartpole"
    results.train(run_dir, "total_timesteps=4096", "eval_every=4", "eval_episodes=4", "checkpoint_every=4", cwd=REPO,
                  timeout=1200)
    return run_dir


def evaluate_cli(run_dir, *options):
    """`python -m rl.evaluate` as a real process: what a user runs."""
    result = run("-m", "rl.evaluate", str(run_dir), *options, "progress=false")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, json.loads((run_dir / "eval.json").read_text())


def evaluate_here(capsys, *argv):
    """The same entry point in this process: (exit code, stdout, stderr). A process each would add ~5 s of
    imports; the command line itself is checked by the tests that use evaluate_cli."""
    code = evaluate_main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def greedy_returns(run_dir, env_id, seeds):
    """An episode loop of its own: one plain gymnasium env per seed, the saved actor's arg-max action on the
    saved normalization of each observation, no rl.evaluate code."""
    policy = rl.load(run_dir)
    returns = []
    for seed in seeds:
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                normalized = policy.agent.obs_normalizer(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
                action = int(policy.agent.actor(normalized)[0].argmax())
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return returns


def test_latest_checkpoint_reproduces_the_runs_final_evaluation(cartpole_run):
    summary = json.loads((cartpole_run / "summary.json").read_text())
    stdout, record = evaluate_cli(cartpole_run)  # no `episodes`: the run's eval_episodes (4), not 10
    assert record["episodes"] == 4
    # The seeds training's evaluations use (seed + 10000 + i), played by a loop that shares no code with either.
    assert record["returns"] == greedy_returns(cartpole_run, "CartPole-v1", [summary["seed"] + 10_000 + i
                                                                            for i in range(4)])
    assert record["return_mean"] == summary["eval_return_mean"]
    assert record["global_step"] == summary["total_timesteps"] and record["checkpoint"] == "step_000000004096.pt"
    assert record["lengths"] == record["returns"]  # CartPole pays 1 a step
    assert f"eval return {record['return_mean']:.1f} +/- {record['return_std']:.1f}" in stdout


def evaluated(capsys, run_dir, *options):
    code, _, err = evaluate_here(capsys, run_dir, *options, "progress=false")
    assert code == 0, err
    return json.loads((run_dir / "eval.json").read_text())


def test_the_run_is_evaluated_with_its_own_torch_thread_count(cartpole_run, capsys):
    # Another thread count sums in another order: MuJoCo episodes then follow other trajectories (the Hopper
    # page's policy scored 3681.5 with 2 threads against its run's 3681.3 with 1).
    torch.set_num_threads(2)
    evaluated(capsys, cartpole_run, "episodes=1")
    assert torch.get_num_threads() == OmegaConf.load(cartpole_run / ".hydra" / "config.yaml").torch_threads == 1


def test_best_and_step_checkpoints_and_a_stochastic_policy(cartpole_run, capsys):
    summary = json.loads((cartpole_run / "summary.json").read_text())
    best = evaluated(capsys, cartpole_run, "checkpoint=best", "episodes=4")
    assert best["checkpoint"] == "best.pt" and best["global_step"] == summary["best_eval_step"]
    assert best["return_mean"] == pytest.approx(summary["best_eval_return_mean"])

    by_step = evaluated(capsys, cartpole_run, "checkpoint=3072", "episodes=3", "seed=5")
    assert by_step["checkpoint"] == "step_000000003072.pt" and by_step["seed"] == 5 and len(by_step["returns"]) == 3

    # A stochastic evaluation, checked against an independent one: the same weights through rl.load and
    # torch.distributions, sampling with the same seed in the same order.
    sampled = evaluated(capsys, cartpole_run, "deterministic=false", "episodes=1", "seed=11")
    policy = rl.load(cartpole_run)
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=11)
    torch.manual_seed(11)
    total, done = 0.0, False
    while not done:
        normalized = policy.agent.obs_normalizer(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
        logits = policy.agent.actor(normalized)[0]
        action = torch.multinomial(torch.softmax(logits, -1), 1).item()
        obs, reward, terminated, truncated, _ = env.step(action)
        total, done = total + reward, terminated or truncated
    assert sampled["deterministic"] is False and sampled["returns"] == [total]


@pytest.mark.parametrize("options, text", [
    (["episodes=0"], "episodes"),
    (["checkpoint=77"], "checkpoint=77"),
    (["checkpoint=newest"], "checkpoint"),
    (["nosuch=1"], "nosuch"),
    (["deterministic=maybe"], "deterministic"),
    (["video"], "key=value"),
])
def test_bad_options_exit_2_with_one_line(cartpole_run, options, text, capsys):
    code, _, err = evaluate_here(capsys, cartpole_run, *options)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], err


def test_missing_run_folder_is_one_line(tmp_path):
    result = run("-m", "rl.evaluate", str(tmp_path / "nothing"))  # the exit code and stderr of the real command
    assert result.returncode == 2 and "no such run directory" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_video_of_a_mujoco_policy_is_written_headless(tmp_path):
    run_dir = tmp_path / "hopper"
    results.train(run_dir, "algo=trpo", "env=Hopper-v4", "total_timesteps=2048", "eval_episodes=1", cwd=REPO,
                  timeout=1200)
    env = {key: value for key, value in __import__("os").environ.items() if key != "MUJOCO_GL"}
    result = run("-m", "rl.evaluate", str(run_dir), "video=true", "episodes=2", "video_episodes=1", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((run_dir / "eval.json").read_text())
    assert len(record["videos"]) == 1 and record["videos"][0].endswith(".mp4")
    video = Path(record["videos"][0])
    assert video.parent == run_dir / "videos" and video.stat().st_size > 1000
    assert np.isfinite(record["return_mean"])
