"""Toy environments shared by the tests.

`rl-test/Counter-v0` makes every transition predictable from its rules, so a test can write down
the whole trajectory a collector must record without running the env:

- observation = (episode id, step in the episode), float32; the first episode of a sub-env reset
  with seed s has id EPISODES_PER_SEED * s, and each later episode of that sub-env adds 1;
- the reward of the step that reaches step k is k (1, 2, 3, ...), whatever the action;
- the episode terminates at step `termination_step(episode id)` (None: never), and the TimeLimit
  wrapper truncates it at step MAX_EPISODE_STEPS, so an episode ends in one of three ways:
  truncated, terminated early, or terminated and truncated on the same step;
- an action outside the action space raises, so a collector that forgets to clip fails.
"""

import gymnasium as gym
import numpy as np
import torch

# One torch thread per test process, as rl.train's default: two xdist workers with two OpenMP threads each
# oversubscribe a 2-core machine, and on a busy one their spinning threads turned a 1.4 s update into 77 s.
torch.set_num_threads(1)

COUNTER_ID = "rl-test/Counter-v0"
MAX_EPISODE_STEPS = 5
EPISODES_PER_SEED = 10


def termination_step(episode):
    """Step at which episode `episode` terminates, or None when only the time limit ends it."""
    return (None, 3, MAX_EPISODE_STEPS)[episode % 3]


class CounterEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, continuous=False):
        self.observation_space = gym.spaces.Box(0.0, np.inf, (2,), np.float32)
        if continuous:
            self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        else:
            self.action_space = gym.spaces.Discrete(3)
        self.episode = -1
        self.step_in_episode = 0

    def _obs(self):
        return np.array([self.episode, self.step_in_episode], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode = EPISODES_PER_SEED * seed if seed is not None else self.episode + 1
        self.step_in_episode = 0
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside {self.action_space}")
        self.step_in_episode += 1
        terminated = self.step_in_episode == termination_step(self.episode)
        return self._obs(), float(self.step_in_episode), terminated, False, {}


if COUNTER_ID not in gym.registry:
    gym.register(id=COUNTER_ID, entry_point=CounterEnv, max_episode_steps=MAX_EPISODE_STEPS)
