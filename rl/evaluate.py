"""Deterministic evaluation on fresh envs."""

import numpy as np
import torch

from rl.envs import make_vector_env


def evaluate(agent, env_id, episodes, seed, env_kwargs=None, deterministic=True):
    """Run one episode in each of `episodes` fresh sub-envs (sub-env i seeded `seed + i`).

    The policy acts by its mode (mean / argmax) unless `deterministic=False`; normalizer statistics are
    read, never updated. Torch's global RNG is saved and restored around a stochastic evaluation, so
    evaluating never changes what a training run draws next. `agent` must be on the CPU.
    Returns (returns, lengths): lists of raw episode returns and lengths.
    """
    envs = make_vector_env(env_id, episodes, "sync", **(env_kwargs or {}))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _run_episodes(agent, envs, episodes, seed, deterministic)
    finally:
        envs.close()


@torch.no_grad()
def _run_episodes(agent, envs, episodes, seed, deterministic):
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    finished = np.zeros(episodes, dtype=bool)
    action_space = envs.single_action_space
    low, high = getattr(action_space, "low", None), getattr(action_space, "high", None)
    while not finished.all():
        action = agent.act(torch.from_numpy(obs.reshape(episodes, -1)).float(), deterministic).numpy()
        if low is not None:
            action = np.clip(action, low, high)
        obs, reward, terminated, truncated, _ = envs.step(action)
        returns += np.where(finished, 0.0, reward)
        lengths += ~finished
        finished |= terminated | truncated
    return returns.tolist(), lengths.tolist()
