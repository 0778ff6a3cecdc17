"""algo.compile=true (PPO): the compiled minibatch loss computes what the eager code does, to float32
rounding."""

import gymnasium as gym
import pytest
import torch
from omegaconf import OmegaConf

from rl.algos import ppo
from rl.policy import Agent
from rl.rollout import Batch
from tests.test_trpo import CONFIGS

pytestmark = pytest.mark.slow  # torch.compile takes about a minute on 2 cores


def problem(discrete, size=256):
    torch.manual_seed(4)
    action_space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1.0, 1.0, (3,))
    agent = Agent(gym.spaces.Box(-1.0, 1.0, (11,)), action_space)
    obs = torch.randn(size, 11)
    with torch.no_grad():
        params = agent.actor(obs)
        actions = agent.actor.sample(*params)
        log_probs = agent.actor.log_prob(*params, actions)
        values = agent.critic(obs)
    advantages = torch.randn(size)
    return agent, Batch(obs, actions, log_probs, values, advantages, values + advantages, num_envs=2)


def config(**overrides):
    cfg = OmegaConf.load(CONFIGS / "ppo.yaml")
    cfg.merge_with({"num_minibatches": 4, "update_epochs": 2}, overrides)
    return cfg


def updated(module, cfg, discrete):
    agent, batch = problem(discrete)
    metrics = module.update(agent, module.make_optimizers(agent, cfg), batch, cfg, torch.Generator().manual_seed(0))
    return agent.state_dict(), metrics


def assert_close(eager, compiled, tolerance):
    for key, value in eager[0].items():
        assert torch.allclose(compiled[0][key], value, rtol=tolerance, atol=tolerance), key
    for key, value in eager[1].items():
        assert abs(compiled[1][key] - value) <= tolerance * (1 + abs(value)), key


def test_compiled_ppo_update_matches_eager():
    for discrete in (True, False):
        assert_close(updated(ppo, config(), discrete), updated(ppo, config(compile=True), discrete), 1e-4)
