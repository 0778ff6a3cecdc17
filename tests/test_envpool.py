"""The EnvPool backend: its next-step autoreset mapped onto same-step autoreset, checked against gymnasium's
own CartPole physics; truncations bootstrap from the true final state; seeding, reproducibility, resume."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl.envs import make_vector_env
from rl.policy import Agent
from rl.results import scalars
from rl.rollout import Collector
from tests.reproducibility.runs import final_parameters, run_all, same_parameters
from tests.test_configs import refusal

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them

NUM_ENVS, NUM_STEPS, LIMIT = 4, 128, 20  # a random policy ends about half its episodes before 20 steps


def gymnasium_step(state, action):
    """CartPole's next state from `state` under `action`, by gymnasium's implementation (the reference)."""
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    env.state = np.array(state, dtype=np.float64)
    next_state, _, terminated, _, _ = env.step(int(action))
    return next_state, terminated


def is_fresh_start(obs):
    return bool(np.all(np.abs(obs) <= 0.05 + 1e-6))  # CartPole starts uniformly in [-0.05, 0.05]^4


@pytest.fixture(scope="module")
def cartpole_rollouts():
    envs = make_vector_env("CartPole-v1", NUM_ENVS, backend="envpool", max_episode_steps=LIMIT)
    torch.manual_seed(0)
    agent = Agent(envs.single_observation_space, envs.single_action_space, actor_hidden_sizes=(16,),
                  critic_hidden_sizes=(16,))
    collector = Collector(envs, agent, NUM_STEPS, "cpu", seed=5)
    rollouts = []
    for _ in range(2):
        rollout, episodes = collector.collect()
        rollouts.append(({name: getattr(rollout, name).clone() for name in
                          ("obs", "actions", "values", "next_values", "terminated", "done")}, episodes))
    envs.close()
    return agent, rollouts


def test_no_transition_crosses_an_episode_and_every_step_follows_cartpole_physics(cartpole_rollouts):
    _, rollouts = cartpole_rollouts
    checked = restarts = 0
    for rollout, _ in rollouts:
        obs, actions, done = rollout["obs"].numpy(), rollout["actions"].numpy(), rollout["done"].numpy()
        for t in range(NUM_STEPS - 1):
            for i in range(NUM_ENVS):
                if done[t, i]:  # the next observation starts a new episode
                    assert is_fresh_start(obs[t + 1, i]), (t, i, obs[t + 1, i])
                    restarts += 1
                else:  # the next observation is this one moved by the physics
                    expected, _ = gymnasium_step(obs[t, i], actions[t, i])
                    assert np.allclose(obs[t + 1, i], expected, atol=1e-5), (t, i)
                    checked += 1
    assert checked > 600 and restarts > 20


def test_truncations_bootstrap_from_the_true_final_state_and_terminations_do_not(cartpole_rollouts):
    agent, rollouts = cartpole_rollouts
    truncations = terminations = 0
    for rollout, _ in rollouts:
        obs, actions = rollout["obs"].numpy(), rollout["actions"].numpy()
        for t in range(NUM_STEPS):
            for i in range(NUM_ENVS):
                if not rollout["done"][t, i]:
                    continue
                final, fell = gymnasium_step(obs[t, i], actions[t, i])
                if rollout["terminated"][t, i]:
                    assert fell  # the physics says the pole fell or the cart left
                    terminations += 1
                    continue
                truncations += 1  # the time limit: bootstrap from V(true final state), not V(new start)
                with torch.no_grad():
                    expected = agent.critic(torch.tensor(final, dtype=torch.float32)[None]).item()
                assert rollout["next_values"][t, i].item() == pytest.approx(expected, abs=1e-5)
                if t + 1 < NUM_STEPS:
                    assert rollout["next_values"][t, i].item() != pytest.approx(rollout["values"][t + 1, i].item())
    assert truncations > 5 and terminations > 5


def test_episode_statistics_count_whole_episodes(cartpole_rollouts):
    _, rollouts = cartpole_rollouts
    lengths = [length for _, episodes in rollouts for _, length in episodes]
    assert lengths and all(1 <= length <= LIMIT for length in lengths)
    assert all(ret == length for _, episodes in rollouts for ret, length in episodes)  # 1 per step


def test_hopper_restarts_where_episodes_end():
    envs = make_vector_env("Hopper-v4", 2, backend="envpool", max_episode_steps=20)
    obs, _ = envs.reset(seed=1)
    first = obs.copy()
    assert np.all(np.abs(first[:, 1:]) < 0.05)  # near the standing start (angles, velocities small)
    actions = np.zeros((2, 3), dtype=np.float32)
    for step in range(1, 41):
        obs, _, terminated, truncated, info = envs.step(actions)
        if step % 20 == 0:  # healthy and idle: every episode is truncated at 20 steps
            assert truncated.all() and not terminated.any()
            finals = np.stack(info["final_obs"])
            assert np.all(np.abs(obs[:, 1:]) < 0.05)  # returned: the new episode's start
            assert not np.allclose(finals, obs)  # final: where the old one ended
        else:
            assert not (terminated | truncated).any() and not info
    envs.close()


def test_same_seed_same_bits_other_seed_other_run_and_resume(tmp_path):
    overrides = ["env.backend=envpool", "algo=trpo", "env=Hopper-v4", "total_timesteps=8192", "eval_episodes=2",
                 "env.num_threads=2"]
    results = run_all({name: (tmp_path / name, overrides + extra) for name, extra in (
        ("a", []), ("b", []), ("other", ["seed=2"]), ("resumed", ["stop_after_steps=4096"]))})
    results.update(run_all({"resumed": (tmp_path / "resumed", [f"resume={tmp_path / 'resumed'}"])}))
    for name, (rc, _, err) in results.items():
        assert rc == 0, (name, err[-3000:])
    assert scalars(tmp_path / "a") == scalars(tmp_path / "b")
    assert same_parameters(final_parameters(tmp_path / "a"), final_parameters(tmp_path / "b"))
    assert scalars(tmp_path / "a")["charts/episodic_return"] != scalars(tmp_path / "other")["charts/episodic_return"]
    # Resumed: new episodes (EnvPool's env state is not saved), the rest continues to the full budget.
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["total_timesteps"] == 8192


def test_unknown_envpool_id_is_one_line():
    line = refusal("env=generic", "env.id=NoSuch-v9", "env.backend=envpool")
    assert "env.id" in line and "not an EnvPool env" in line, line
