"""Envs whose actions are MultiDiscrete or MultiBinary, for end-to-end runs: `env.id=tests.toy_envs:<id>`.

Each is a one-step contextual bandit: the observation shows a random target, the action is scored by how
many of its components match it, and the episode ends. A policy that reads the observation can score the
maximum every time; a random one scores the expected number of chance matches.
- MatchDigits-v0: MultiDiscrete([3, 4, 2]); target one-hot per dimension (9 inputs); reward up to 3, random
  1/3 + 1/4 + 1/2 = 1.083.
- MatchBits-v0: MultiBinary(5); target bits as +/-1 (5 inputs); reward up to 5, random 2.5.
- PickValid-v0: Discrete(16) of which two are valid each step, named by a Dict key `action_mask`; the key
  `higher` (Discrete(2)) says whether the valid action with the higher index pays 1 (the other valid one
  pays 0.2, an invalid one 0). A masked policy only has to learn which of its two to take from `higher`
  (random: 0.6); an unmasked one must also find the two among sixteen from the mask bits (random: 0.075).
  PickValidInfo-v0: the same with the mask in `info["action_mask"]` and `higher` as a Box of one feature.
  strict=True makes an invalid action an error, so a run that ever takes one fails. Its state is saved in
  checkpoints (snapshot_state / restore_state), so its runs resume exactly.
- PositionOnlyCartPole-v0: CartPole-v1 showing the cart position and pole angle only (no velocities): a
  policy must remember the last observations to balance (as POPGym's StatelessCartPole).
- VelocityFreePendulum-v0: Pendulum-v1 showing cos and sin of the angle only (no angular velocity).
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


PICKS = 16


class PickValid(gym.Env):
    def __init__(self, mask_in_info=False, strict=False):
        self.mask_in_info, self.strict = mask_in_info, strict
        higher = gym.spaces.Box(0.0, 1.0, (1,), np.float32) if mask_in_info else gym.spaces.Discrete(2)
        self.observation_space = higher if mask_in_info else gym.spaces.Dict(
            {"higher": higher, "action_mask": gym.spaces.MultiBinary(PICKS)})
        self.action_space = gym.spaces.Discrete(PICKS)

    def _observe(self):
        self.valid = np.sort(self.np_random.choice(PICKS, 2, replace=False))
        self.higher = int(self.np_random.integers(2))
        mask = np.zeros(PICKS, dtype=np.int8)
        mask[self.valid] = 1
        if self.mask_in_info:
            return np.array([self.higher], dtype=np.float32), {"action_mask": mask}
        return {"higher": self.higher, "action_mask": mask}, {}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observe()

    def snapshot_state(self):
        return {"valid": self.valid.tolist(), "higher": self.higher}

    def restore_state(self, state):
        self.valid, self.higher = np.array(state["valid"]), int(state["higher"])

    def step(self, action):
        if self.strict and action not in self.valid:
            raise ValueError(f"action {action} is masked (valid: {self.valid.tolist()})")
        paid = self.valid[self.higher]
        reward = 1.0 if action == paid else 0.2 if action in self.valid else 0.0
        obs, info = self._observe()
        return obs, reward, True, False, info


class KeepFeatures(gym.ObservationWrapper):
    """Only the observation features at `keep`."""

    def __init__(self, env, keep):
        super().__init__(env)
        self.keep = list(keep)
        high = env.observation_space.high[self.keep]
        self.observation_space = gym.spaces.Box(-high, high, (len(self.keep),), np.float32)

    def observation(self, obs):
        return obs[self.keep].astype(np.float32)


def position_only_cartpole(**kwargs):
    return KeepFeatures(gym.make("CartPole-v1", **kwargs), [0, 2])  # x, theta (not their velocities)


def velocity_free_pendulum(**kwargs):
    return KeepFeatures(gym.make("Pendulum-v1", **kwargs), [0, 1])  # cos, sin (not the angular velocity)


gym.register("MatchDigits-v0", entry_point=MatchDigits)
gym.register("PositionOnlyCartPole-v0", entry_point=position_only_cartpole)
gym.register("VelocityFreePendulum-v0", entry_point=velocity_free_pendulum)
gym.register("MatchBits-v0", entry_point=MatchBits)
gym.register("PickValid-v0", entry_point=PickValid)
gym.register("PickValidInfo-v0", entry_point=PickValid, kwargs={"mask_in_info": True})
