"""An env that breaks on request, for the fault-injection tests: `env.id=tests.faults.faulty_env:Faulty-v0`.

Keyword arguments (`+env.kwargs.<name>=...`):
- fault: none | raise | nan_obs | nan_reward | exit (the process dies at once) | hang (step never returns);
- fault_seed: only the sub-env first reset with this seed breaks (a run with seed s seeds sub-env i s + i);
- fault_after: it breaks at this step of its life (counted over episodes);
- marker: it breaks only while this file exists, so a test can mend the env and resume;
- continuous: a Box action space instead of Discrete(2);
- hang_marker: with fault=hang, the step creates this file as it starts to hang (a test waits for it);
- close_marker: once broken, close() creates this file, then waits until `<close_marker>.release` exists (a
  slow clean-up a signal can land in; the test releases it after signalling; bounded by an hour);
- constant_return: every episode is one step that ends (terminated) with reward 1, so every critic target is
  1 up to rounding: the explained variance of a solved task, undefined or nearly so.
Otherwise it is a dull task: 4-d random observations, reward = 1 per step, episodes of 50 steps.
"""

import os
import time

import gymnasium as gym
import numpy as np


class Faulty(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, fault="none", fault_seed=None, fault_after=0, marker=None, continuous=False, close_marker=None,
                 constant_return=False, hang_marker=None):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32) if continuous else gym.spaces.Discrete(2)
        self.fault, self.fault_seed, self.fault_after, self.marker = fault, fault_seed, fault_after, marker
        self.close_marker, self.hang_marker = close_marker, hang_marker
        self.constant_return = constant_return
        self.first_seed = None
        self.steps = 0
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.first_seed is None:
            self.first_seed = seed
        self.t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def _breaks_now(self):
        return (self.fault != "none" and self.first_seed == self.fault_seed and self.steps >= self.fault_after
                and (self.marker is None or os.path.exists(self.marker)))

    def step(self, action):
        self.steps += 1
        self.t += 1
        obs, reward = self.np_random.uniform(-1, 1, 4).astype(np.float32), 1.0
        if self._breaks_now():
            if self.fault == "raise":
                raise ValueError(f"injected fault at step {self.steps}")
            if self.fault == "nan_obs":
                obs[1] = np.nan
            if self.fault == "nan_reward":
                reward = float("nan")
            if self.fault == "exit":
                os._exit(17)
            if self.fault == "hang":
                if self.hang_marker is not None:
                    open(self.hang_marker, "a").close()
                time.sleep(3600)
        if self.constant_return:
            return obs, reward, True, False, {}
        return obs, reward, False, self.t >= 50, {}

    def close(self):
        if self.close_marker is not None and self._breaks_now():
            open(self.close_marker, "a").close()
            deadline = time.monotonic() + 3600
            while not os.path.exists(f"{self.close_marker}.release") and time.monotonic() < deadline:
                time.sleep(0.02)


gym.register("Faulty-v0", entry_point=Faulty)
