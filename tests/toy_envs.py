"""Envs whose actions are MultiDiscrete or MultiBinary, for end-to-end runs: `env.id=tests.toy_envs:<id>`.

Each is a one-step contextual bandit: the observation shows a random target, the action is scored by how
many of its components match it, and the episode ends. A policy that reads the observation can score the
maximum every time; a random one scores the expected number of chance matches.
- MatchDigits-v0: MultiDiscrete([3, 4, 2]); target one-hot per dimension (9 inputs); reward up to 3, random
  1/3 + 1/4 + 1/2 = 1.083.
- MatchBits-v0: MultiBinary(5); target bits as +/-1 (5 inputs); reward up to 5, random 2.5.
"""

import gymnasium as gym
import numpy as np

SIZES = (3, 4, 2)
BITS = 5


class MatchDigits(gym.Env):
    def __init__(self, start=0):  # start != 0: a MultiDiscrete rl refuses (its actions are 0..k-1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (sum(SIZES),), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(SIZES, start=[start] * len(SIZES))

    def _observe(self):
        self.target = np.array([self.np_random.integers(k) for k in SIZES])
        return np.concatenate([np.eye(k, dtype=np.float32)[t] for k, t in zip(SIZES, self.target)])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observe(), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action)), action
        reward = float((np.asarray(action) == self.target).sum())
        return self._observe(), reward, True, False, {}


class MatchBits(gym.Env):
    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (BITS,), np.float32)
        self.action_space = gym.spaces.MultiBinary(BITS)

    def _observe(self):
        self.target = self.np_random.integers(2, size=BITS)
        return (2.0 * self.target - 1.0).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observe(), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=np.int8)), action
        reward = float((np.asarray(action) == self.target).sum())
        return self._observe(), reward, True, False, {}


gym.register("MatchDigits-v0", entry_point=MatchDigits)
gym.register("MatchBits-v0", entry_point=MatchBits)
