"""scripts/policy_drift.py: swapping weights and observation statistics between two checkpoints of a run."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

import rl
from rl import results
from tests import scripts_path

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them

REPO = Path(__file__).resolve().parent.parent
drift = scripts_path.script("policy_drift")
# TRPO on Pendulum (a Gaussian policy, normalized observations): 200-step iterations, a checkpoint and an
# evaluation after each.
STEPS = (400, 800)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift") / "run"
    results.train(folder, "algo=trpo", "env=generic", "env.id=Pendulum-v1", "env.normalize_observations=true",
                  "algo.num_steps=200", "total_timesteps=800", "checkpoint_every=1", "checkpoint_keep=10",
                  "eval_every=1", "eval_episodes=2", cwd=REPO, timeout=1200)
    return folder


def logged_evaluations(run_dir):
    logged = results.scalars(run_dir)
    return {tag: dict(logged[tag]) for tag in ("eval/return", "eval/length")}


def mean_action_returns(run_dir, step, seeds):
    """An episode loop of its own on plain Pendulum envs: the checkpoint's statistics applied by hand, the
    Gaussian's mean, clipped to the action bounds; no rl.evaluate or policy_drift code."""
    agent = rl.load(run_dir, checkpoint=step).agent
    stats = agent.obs_normalizer.stats
    returns = []
    for seed in seeds:
        env = gym.make("Pendulum-v1")
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            raw = torch.as_tensor(obs, dtype=torch.float32)
            normalized = ((raw - stats.mean) / torch.sqrt(stats.var + 1e-8)).clamp(-10, 10).float()
            with torch.no_grad():
                mean = agent.actor.net(normalized.unsqueeze(0))[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(np.clip(mean, -2.0, 2.0))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return returns


def test_own_weights_and_statistics_reproduce_the_runs_evaluations(run_dir, tmp_path):
    out = tmp_path / "drift.json"
    assert drift.main([str(run_dir), *map(str, STEPS), "--episodes", "2", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    logged = logged_evaluations(run_dir)
    for name, step in (("weights a, statistics a", STEPS[0]), ("weights b, statistics b", STEPS[1])):
        row = result["evaluations"][name]
        # training's evaluation seeds: seed (1) + 10000 + i
        assert row["return"] == pytest.approx(np.mean(mean_action_returns(run_dir, step, [10_001, 10_002])), rel=1e-5)
        assert row["return"] == pytest.approx(logged["eval/return"][step], rel=1e-5)
        assert row["length"] == pytest.approx(logged["eval/length"][step])
        assert row["return_per_step"] == pytest.approx(row["return"] / row["length"])
    # the swaps are other policies: neither evaluates exactly like a run's own checkpoint
    own = {result["evaluations"][n]["return"] for n in ("weights a, statistics a", "weights b, statistics b")}
    assert not own & {result["evaluations"][n]["return"] for n in ("weights a, statistics b",
                                                                    "weights b, statistics a")}
    moved = result["drift"]
    assert moved["kl"] > 0 and moved["kl_weights"] > 0 and moved["kl_statistics"] > 0
    assert moved["states"] == 2 * 200  # Pendulum's episodes last 200 steps


def test_a_checkpoint_against_itself_has_not_moved(run_dir):
    result = drift.compare(run_dir, STEPS[0], STEPS[0], episodes=1)
    assert result["drift"] == {"kl": 0.0, "kl_weights": 0.0, "kl_statistics": 0.0, "states": 200}
    assert len({row["return"] for row in result["evaluations"].values()}) == 1


def test_kl_agrees_with_torch_distributions_on_raw_observations(run_dir):
    agent_a, _ = drift.load_agent(run_dir, STEPS[0])
    agent_b, _ = drift.load_agent(run_dir, STEPS[1])
    *_, states = drift.evaluate_keeping_states(agent_a, "Pendulum-v1", 1, 10_001, {})

    def normal(agent):  # normalize by hand from the saved statistics, then the Gaussian the actor outputs
        stats = agent.obs_normalizer.stats
        normalized = ((states - stats.mean) / torch.sqrt(stats.var + 1e-8)).clamp(-10, 10).float()
        return Normal(agent.actor.net(normalized), agent.actor.log_std.exp())

    with torch.no_grad():
        expected = kl_divergence(normal(agent_a), normal(agent_b)).sum(-1).mean()
    assert drift.mean_kl(agent_a, agent_b, states) == pytest.approx(float(expected), rel=1e-4)


def test_a_missing_checkpoint_is_one_line(run_dir, capsys):
    assert drift.main([str(run_dir), "400", "12345"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint=12345: no such checkpoint" in err
