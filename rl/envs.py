"""Vector environments.

We use gymnasium's SAME_STEP autoreset: when a sub-env's episode ends, `step` returns the first
observation of the next episode and puts the true last observation in `info["final_obs"]`. A
transition therefore never crosses an episode boundary, and a time-limit truncation can bootstrap
from the real final state.
"""

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode


def make_vector_env(env_id, num_envs, vectorization="sync", start_method=None, **env_kwargs):
    vector_kwargs = {"autoreset_mode": AutoresetMode.SAME_STEP}
    if vectorization == "async":
        vector_kwargs["context"] = start_method
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization,
                        vector_kwargs=vector_kwargs, **env_kwargs)


def final_observations(info, done_indices):
    """Stack the true last observations of the sub-envs in `done_indices` -> (len, obs_dim)."""
    final = info["final_obs"]
    return np.stack([final[i] for i in done_indices])


def action_bounds(action_space):
    """(low, high) arrays for Box spaces, None for discrete ones."""
    if isinstance(action_space, gym.spaces.Box):
        return action_space.low, action_space.high
    return None


def check_env_id(env_id):
    """Raise ValueError with a one-line reason when `env_id` is not registered with gymnasium."""
    try:
        gym.spec(env_id)
    except Exception as error:  # gymnasium raises several error types here
        raise ValueError(str(error).splitlines()[0]) from None
