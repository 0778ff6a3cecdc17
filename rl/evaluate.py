"""Deterministic evaluation on fresh envs."""

import numpy as np
import torch

from rl.envs import make_vector_env


def evaluate(agent, env_id, episodes, seed, env_kwargs=None):
    """Run one episode in each of `episodes` fresh sub-envs with the deterministic policy (mean / argmax).

    Returns the list of episode returns (raw rewards). `agent` must be on the CPU.
    """
    envs = make_vector_env(env_id, episodes, "sync", **(env_kwargs or {}))
    try:
        obs, _ = envs.reset(seed=seed)
        returns = np.zeros(episodes)
        finished = np.zeros(episodes, dtype=bool)
        action_space = envs.single_action_space
        low, high = getattr(action_space, "low", None), getattr(action_space, "high", None)
        while not finished.all():
            action = agent.act(torch.from_numpy(obs.reshape(episodes, -1)).float()).numpy()
            if low is not None:
                action = np.clip(action, low, high)
            obs, reward, terminated, truncated, _ = envs.step(action)
            returns += np.where(finished, 0.0, reward)
            finished |= terminated | truncated
        return returns.tolist()
    finally:
        envs.close()
