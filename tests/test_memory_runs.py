"""Policies with memory in rollouts and runs: the collector's log-probs against a step-by-step re-run of the
policy from a zero state at each episode start, across rollouts; reproducible, async-equals-sync and exactly resumed runs
(the cores' live states in the checkpoint); rl.load().act() with its state replaying the final evaluation;
the refusals. (The cores and the FVP through time: test_memory.py.)"""

import gymnasium as gym
import numpy as np
import pytest
import torch

import rl
from rl import results
from rl.envs import make_vector_env
from rl.export import ExportError, exportable
from rl.policy import Agent
from rl.rollout import Collector
from tests.reproducibility.runs import assert_same_run, run_all
from tests.test_configs import refusal


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_rollout_log_probs_equal_a_step_by_step_rerun_from_zero_at_each_episode_start(kind):
    torch.manual_seed(0)
    envs = make_vector_env("CartPole-v1", 3)
    agent = Agent(envs.single_observation_space, envs.single_action_space, actor_hidden_sizes=(8,),
                  critic_hidden_sizes=(8,), memory={"kind": kind, "size": 6})
    collector = Collector(envs, agent, num_steps=40, device="cpu", seed=1)
    rollouts = []
    for _ in range(2):  # the second rollout continues the first one's episodes and states
        rollout, _ = collector.collect()
        rollouts.append({name: getattr(rollout, name).clone() for name in ("obs", "actions", "log_probs", "values",
                                                                           "done", "starts")})
    obs = torch.cat([r["obs"] for r in rollouts])
    actions, done = torch.cat([r["actions"] for r in rollouts]), torch.cat([r["done"] for r in rollouts])
    # Independently: one env at a time, one step at a time, zeros at the first step and after every done.
    expected_log_probs = torch.zeros(80, 3)
    expected_values = torch.zeros(80, 3)
    with torch.no_grad():
        for e in range(3):
            actor_state, critic_state = (torch.zeros(1, agent.actor.net.state_size),
                                         torch.zeros(1, agent.critic.net.state_size))
            for t in range(80):
                if t > 0 and done[t - 1, e]:
                    actor_state, critic_state = torch.zeros_like(actor_state), torch.zeros_like(critic_state)
                x = obs[t, e][None]
                logits, actor_state = agent.actor.net.step(x, actor_state)
                value, critic_state = agent.critic.net.step(x, critic_state)
                dist = torch.distributions.Categorical(logits=logits)
                expected_log_probs[t, e] = dist.log_prob(actions[t, e][None])[0]
                expected_values[t, e] = value[0, 0]
    log_probs = torch.cat([r["log_probs"] for r in rollouts])
    values = torch.cat([r["values"] for r in rollouts])
    assert done.any() and torch.allclose(log_probs, expected_log_probs, atol=1e-5)
    assert torch.allclose(values, expected_values, atol=1e-5)
    starts = torch.cat([r["starts"] for r in rollouts])
    assert starts[0].eq(1).all() and torch.equal(starts[1:].bool(), done[:-1])  # the episode starts it used
    envs.close()


RECURRENT = ["env=generic", "env.id=tests.toy_envs:PositionOnlyCartPole-v0", "env.num_envs=4", "eval_episodes=3",
             "eval_every=2", "checkpoint_every=1"]
JOBS = {
    "ppo_gru": ["algo=ppo", "algo.memory=gru", "algo.memory_size=16", "algo.num_steps=64", "algo.num_minibatches=2",
                "algo.sequence_length=16", "total_timesteps=2048", "seed=3"],
    "trpo_lstm": ["algo=trpo", "algo.memory=lstm", "algo.memory_size=16", "algo.num_steps=128",
                  "algo.vf_minibatches=2", "algo.sequence_length=32", "total_timesteps=2048", "seed=4"],
}


@pytest.mark.slow
class TestRuns:
    @pytest.fixture(scope="class")
    def runs(self, tmp_path_factory):
        root = tmp_path_factory.mktemp("memory")
        jobs = {}
        for name, overrides in JOBS.items():
            jobs[name] = (root / name, RECURRENT + overrides)
            jobs[f"{name}_again"] = (root / f"{name}_again", RECURRENT + overrides)
            jobs[f"{name}_async"] = (root / f"{name}_async", RECURRENT + overrides + ["env.vectorization=async"])
            jobs[f"{name}_stopped"] = (root / f"{name}_stopped", RECURRENT + overrides + ["stop_after_steps=1024"])
        for name, (rc, _, err) in run_all(jobs).items():
            assert rc == 0, (name, err[-2000:])
        resumes = {name: (jobs[f"{name}_stopped"][0], [f"resume={jobs[f'{name}_stopped'][0]}"]) for name in JOBS}
        for name, (rc, _, err) in run_all(resumes).items():
            assert rc == 0, (name, err[-2000:])
        return {name: run_dir for name, (run_dir, _) in jobs.items()}

    @pytest.mark.parametrize("name", list(JOBS))
    def test_same_seed_same_bits_async_equals_sync_and_resume_equals_uninterrupted(self, runs, name):
        assert_same_run(runs[name], runs[f"{name}_again"])
        assert_same_run(runs[name], runs[f"{name}_async"])  # the cores' states are the learner's, not the workers'
        assert_same_run(runs[name], runs[f"{name}_stopped"])  # the cores' states came back from the checkpoint

    @pytest.mark.parametrize("name", list(JOBS))
    def test_the_loaded_policy_with_its_state_replays_the_final_evaluation(self, runs, name):
        import tests.toy_envs  # noqa: F401  (registers the env)

        policy = rl.load(runs[name])
        summary = results.summary(runs[name])
        returns = []
        for episode in range(summary["eval_episodes"]):
            env = gym.make("PositionOnlyCartPole-v0")
            obs, _ = env.reset(seed=summary["seed"] + 10_000 + episode)
            state, total, done = policy.initial_state(), 0.0, False
            while not done:
                action, state = policy.act(obs, state=state)
                obs, reward, terminated, truncated, _ = env.step(int(action))
                total, done = total + reward, terminated or truncated
            returns.append(total)
        assert np.mean(returns) == summary["eval_return_mean"]
        with pytest.raises(ValueError, match="this policy has memory"):
            policy.act(obs)
        with pytest.raises(ExportError, match="cannot export a policy with memory"):
            exportable(policy)


def test_sequences_that_do_not_fit_the_batch_are_refused_in_one_line():
    line = refusal("algo=ppo", "algo.memory=gru", "algo.sequence_length=48")  # CartPole's num_steps: 32
    assert "algo.sequence_length" in line and "must divide algo.num_steps" in line
    line = refusal("algo=ppo", "algo.memory=gru", "algo.sequence_length=16", "algo.num_minibatches=4")
    assert "algo.num_minibatches" in line and "num_steps / sequence_length = 2" in line
    line = refusal("algo=trpo", "algo.memory=lstm", "algo.fvp_subsample=0.5", "algo.sequence_length=32")
    assert "algo.fvp_subsample" in line and "whole sequences" in line
    assert "must be one of none, gru, lstm" in refusal("algo=ppo", "algo.memory=transformer")
