"""Collector on the Counter env (tests/conftest.py): the buffer must hold exactly the trajectory the
env's rules predict, with truncations bootstrapped from the true final observation."""

from dataclasses import fields

import numpy as np
import pytest
import torch

from rl.envs import make_vector_env
from rl.policy import Agent
from rl.rollout import Collector, Rollout, gae
from tests.conftest import COUNTER_ID, EPISODES_PER_SEED, MAX_EPISODE_STEPS, termination_step

NUM_ENVS, NUM_STEPS, NUM_ROLLOUTS, SEED = 3, 5, 3, 0
GAMMA, GAE_LAMBDA = 0.9, 0.8


def expected_stream(first_episode, total_steps):
    """What one sub-env must produce, step by step, derived from the Counter rules alone."""
    episode, step, rows = first_episode, 0, []
    for _ in range(total_steps):
        obs = (episode, step)
        step += 1
        terminated = step == termination_step(episode)
        truncated = step == MAX_EPISODE_STEPS
        rows.append({"obs": obs, "reward": float(step), "terminated": terminated, "truncated": truncated,
                     "final_obs": (episode, step)})
        if terminated or truncated:
            episode, step = episode + 1, 0
    rows.append({"obs": (episode, step)})  # the observation the next rollout starts from
    return rows


def expected_table(total_steps):
    """(total_steps + 1, NUM_ENVS) grid of expected rows: env n is reset with seed SEED + n."""
    streams = [expected_stream(EPISODES_PER_SEED * (SEED + n), total_steps) for n in range(NUM_ENVS)]
    return [[streams[n][t] for n in range(NUM_ENVS)] for t in range(total_steps + 1)]


def collect(vectorization, continuous, normalize_observations):
    envs = make_vector_env(COUNTER_ID, NUM_ENVS, vectorization, continuous=continuous)
    try:
        torch.manual_seed(0)
        agent = Agent(envs.single_observation_space, envs.single_action_space, actor_hidden_sizes=(16,),
                      critic_hidden_sizes=(16,), normalize_observations=normalize_observations)
        with torch.no_grad():  # raw observations reach ~25: keep the critic's tanh layer out of saturation
            agent.critic.net[0].weight.mul_(0.1)
        collector = Collector(envs, agent, NUM_STEPS, "cpu", SEED)
        results = []
        for _ in range(NUM_ROLLOUTS):
            rollout, episodes = collector.collect()
            # The collector refills the same buffer on the next call: keep a copy.
            results.append((Rollout(**{f.name: getattr(rollout, f.name).clone() for f in fields(rollout)
                                   if getattr(rollout, f.name) is not None}),
                            episodes))
        return agent, results
    finally:
        envs.close()


def critic_value(agent, obs):
    with torch.no_grad():
        return agent.critic(torch.as_tensor(obs, dtype=torch.float32).reshape(-1, 2)).reshape(-1)


@pytest.mark.parametrize("vectorization,continuous", [("sync", False), ("sync", True), ("async", False)])
def test_collector_matches_env_rules(vectorization, continuous):
    agent, results = collect(vectorization, continuous, normalize_observations=False)
    table = expected_table(NUM_STEPS * NUM_ROLLOUTS)
    saw = {"truncated": 0, "terminated": 0, "both": 0, "truncated_last_step": 0}

    for r, (rollout, episodes) in enumerate(results):
        offset = r * NUM_STEPS
        rows = table[offset:offset + NUM_STEPS + 1]
        expected_obs = torch.tensor([[row["obs"] for row in step] for step in rows[:-1]], dtype=torch.float32)
        assert torch.equal(rollout.obs, expected_obs)
        assert torch.equal(rollout.rewards, torch.tensor([[row["reward"] for row in step] for step in rows[:-1]]))
        terminated = torch.tensor([[row["terminated"] for row in step] for step in rows[:-1]])
        truncated = torch.tensor([[row["truncated"] for row in step] for step in rows[:-1]])
        assert torch.equal(rollout.terminated, terminated)
        assert torch.equal(rollout.done, terminated | truncated)

        # (a) No transition crosses an episode boundary: within a column, the next observation is
        # the next step of the same episode unless the episode ended; then it is step 0 of the next one.
        obs = torch.cat([rollout.obs, torch.tensor([[row["obs"] for row in rows[-1]]])])
        for t in range(NUM_STEPS):
            for n in range(NUM_ENVS):
                episode, step = obs[t, n].tolist()
                following = (episode + 1, 0.0) if rollout.done[t, n] else (episode, step + 1)
                assert tuple(obs[t + 1, n].tolist()) == following, (r, t, n)

        # V(s) of the observation acted on, and the policy's log-probability of the stored action.
        assert torch.allclose(rollout.values, critic_value(agent, rollout.obs).reshape(NUM_STEPS, NUM_ENVS),
                              atol=1e-6)
        with torch.no_grad():
            params = agent.actor(rollout.obs)
        if continuous:
            dist = torch.distributions.Normal(params[0], params[1].exp())
            expected_log_probs = dist.log_prob(rollout.actions).sum(-1)
        else:
            expected_log_probs = torch.distributions.Categorical(logits=params[0]).log_prob(rollout.actions)
        assert torch.allclose(rollout.log_probs, expected_log_probs, atol=1e-5)

        # (b) next_values: V(true final obs) after a truncation (not of the reset obs), else V(next obs).
        advantages, _ = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                            rollout.done, GAMMA, GAE_LAMBDA)
        for t in range(NUM_STEPS):
            for n in range(NUM_ENVS):
                row = rows[t][n]
                reward, value = row["reward"], rollout.values[t, n].item()
                if row["terminated"]:
                    saw["both" if row["truncated"] else "terminated"] += 1
                    # No bootstrap, and the recursion stops: the advantage is the last TD error.
                    assert advantages[t, n].item() == pytest.approx(reward - value, abs=1e-5)
                elif row["truncated"]:
                    saw["truncated"] += 1
                    saw["truncated_last_step"] += t == NUM_STEPS - 1
                    final_value = critic_value(agent, row["final_obs"]).item()
                    reset_value = critic_value(agent, rows[t + 1][n]["obs"]).item()
                    assert abs(final_value - reset_value) > 1e-3  # else the check below proves nothing
                    assert rollout.next_values[t, n].item() == pytest.approx(final_value, abs=1e-6)
                    assert advantages[t, n].item() == pytest.approx(reward + GAMMA * final_value - value,
                                                                    abs=1e-5)
                else:
                    next_value = critic_value(agent, rows[t + 1][n]["obs"]).item()
                    assert rollout.next_values[t, n].item() == pytest.approx(next_value, abs=1e-6)

        # (c) Finished episodes, in step order then env order, with raw returns 1 + 2 + ... + length.
        expected_episodes = []
        for t in range(NUM_STEPS):
            for n in range(NUM_ENVS):
                row = rows[t][n]
                if row["terminated"] or row["truncated"]:
                    length = row["final_obs"][1]
                    expected_episodes.append((float(length * (length + 1) // 2), length))
        assert episodes == expected_episodes

    # The schedule above must really cover every way an episode can end.
    assert all(count > 0 for count in saw.values()), saw

    if continuous:  # the buffer keeps the unclipped sample (the env, which raises otherwise, got it clipped)
        actions = torch.cat([rollout.actions for rollout, _ in results])
        assert (actions.abs() > 1.0).any()


def pooled_normalize(raw_rows, x, epsilon=1e-4, clip=10.0):
    """Normalize x with the mean/var of raw_rows plus RunningMeanStd's prior (count epsilon, mean 0, var 1)."""
    raw_rows = np.asarray(raw_rows, dtype=np.float64)
    count = len(raw_rows) + epsilon
    mean = raw_rows.sum(0) / count
    m2 = epsilon * 1.0 + epsilon * mean ** 2 + ((raw_rows - mean) ** 2).sum(0)
    var = m2 / count
    return np.clip((np.asarray(x, dtype=np.float64) - mean) / np.sqrt(var + 1e-8), -clip, clip)


def test_collector_normalizes_final_observations_with_current_statistics():
    agent, results = collect("sync", False, normalize_observations=True)
    table = expected_table(NUM_STEPS * NUM_ROLLOUTS)
    seen, checked = [], 0
    for r, (rollout, _) in enumerate(results):
        for t in range(NUM_STEPS):
            rows = table[r * NUM_STEPS + t]
            seen += [row["obs"] for row in rows]  # the collector folds in the obs it acts on, then acts
            expected = pooled_normalize(seen, [row["obs"] for row in rows])
            assert np.allclose(rollout.obs[t].numpy(), expected, atol=1e-5), (r, t)
            for n, row in enumerate(rows):
                if row["truncated"] and not row["terminated"]:
                    final = pooled_normalize(seen, [row["final_obs"]])
                    assert rollout.next_values[t, n].item() == pytest.approx(critic_value(agent, final).item(),
                                                                             abs=1e-5)
                    checked += 1
    assert checked > 0
