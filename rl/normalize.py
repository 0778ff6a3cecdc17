"""Running statistics kept as module buffers, so they are saved with the policy.

Statistics are updated where acting happens, on the CPU, once per env step. That path works on NumPy views
of the buffers: a handful of NumPy operations on tiny arrays cost a few microseconds, the same in torch
several times more. `forward` (torch) serves the learner and `rl.load(...).act`.
"""

import math

import numpy as np
import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (Chan et al. parallel update), in float64."""

    def __init__(self, shape=(), epsilon=1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # A tiny prior count keeps the first update from dividing by zero.
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    def numpy_views(self):
        """(mean, var, count) as NumPy arrays sharing memory with the buffers (which must be on the CPU)."""
        pointer = self.mean.data_ptr()
        if getattr(self, "_views_of", None) != pointer:  # first use, or the buffers were replaced (.to(), ...)
            self._views = (self.mean.numpy(), self.var.numpy(), self.count.numpy())
            self._views_of = pointer
        return self._views

    def update(self, batch):
        """Fold a batch (B, *shape), NumPy or torch, into the statistics."""
        if torch.is_tensor(batch):
            batch = batch.detach().to("cpu", torch.float64).numpy()
        batch = np.asarray(batch, dtype=np.float64)
        mean, var, count = self.numpy_views()
        n, prior = batch.shape[0], float(count)
        if n == 1:  # one env: skip the reductions
            batch_mean, batch_var = batch[0], 0.0
        else:  # ndarray.mean and .var's own ufunc steps, without their Python wrappers (the same bits)
            batch_mean = np.add.reduce(batch, 0) / n
            centered = batch - batch_mean
            batch_var = np.add.reduce(centered * centered, 0) / n
        total = prior + n
        delta = batch_mean - mean
        mean += delta * (n / total)
        var *= prior / total
        var += batch_var * (n / total) + delta * delta * (prior * n / (total * total))
        count[...] = total


class ObservationNormalizer(nn.Module):
    """(obs - mean) / std, clipped; `enabled=False` makes it the identity but keeps the buffers.

    `features`: the indices (into the last dimension) that are normalized, the statistics being theirs alone
    (`shape` their count); the other features pass through unchanged. None: all of them.
    """

    def __init__(self, shape, clip=10.0, enabled=True, features=None, epsilon=1e-8):
        super().__init__()
        self.stats = RunningMeanStd(shape)
        self.clip = clip
        self.enabled = enabled
        self.epsilon = epsilon
        self.features = None if features is None else np.asarray(features, dtype=np.int64)
        self._feature_index = None if features is None else torch.from_numpy(self.features)

    def forward(self, obs):
        if not self.enabled:
            return obs
        if self.features is not None:
            index = self._feature_index.to(obs.device)
            return obs.index_copy(-1, index, self._normalize(obs.index_select(-1, index)))
        return self._normalize(obs)

    def _normalize(self, obs):
        std = torch.sqrt(self.stats.var + self.epsilon)
        return ((obs - self.stats.mean) / std).clamp(-self.clip, self.clip).to(obs.dtype)

    def normalize_numpy(self, obs):
        """The same as `forward` for a NumPy batch (CPU buffers), as float32."""
        if not self.enabled:
            return np.asarray(obs, dtype=np.float32)
        mean, var, _ = self.stats.numpy_views()
        if self.features is not None:
            out = np.array(obs, dtype=np.float32)
            out[..., self.features] = _clip_inplace((out[..., self.features] - mean) / np.sqrt(var + self.epsilon),
                                                    self.clip)
            return out
        return _clip_inplace((obs - mean) / np.sqrt(var + self.epsilon), self.clip).astype(np.float32)

    def update(self, obs):
        if self.enabled:
            self.stats.update(obs if self.features is None else np.asarray(obs)[..., self.features])

    def update_and_normalize(self, obs):
        """`update(obs)`, then `normalize_numpy(obs)`: the collector's per-step call. One row (one env)
        takes a path of its own with the same operations in the same order (the same bits), a third cheaper."""
        if not (self.enabled and self.features is None and obs.shape[0] == 1):
            self.update(obs)
            return self.normalize_numpy(obs)
        mean, var, count = self.stats.numpy_views()
        prior = float(count)
        total = prior + 1
        delta = obs[0] - mean
        mean += delta * (1 / total)
        var *= prior / total
        var += delta * delta * (prior / (total * total))
        count[...] = total
        return _clip_inplace((obs - mean) / np.sqrt(var + self.epsilon), self.clip).astype(np.float32)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (PPO's reward scaling).

    The per-env discounted returns are collector state, passed in; only the statistics are buffers.
    """

    def __init__(self, gamma, clip=10.0, enabled=True, epsilon=1e-8):
        super().__init__()
        self.stats = RunningMeanStd(())
        self.gamma = gamma
        self.clip = clip
        self.enabled = enabled
        self.epsilon = epsilon

    def forward(self, reward, discounted_return, done):
        """Scale reward (N,); update discounted_return (N,) in place and reset it where done.

        NumPy arrays in and out (float64 `discounted_return`); the result is float32.
        """
        reward = np.asarray(reward, dtype=np.float64)
        if not self.enabled:
            return reward.astype(np.float32)
        if reward.shape == (1,):
            return self._one_env(float(reward[0]), discounted_return, bool(done[0]))
        return self._batch(reward, discounted_return, done)

    def _batch(self, reward, discounted_return, done):
        discounted_return *= self.gamma
        discounted_return += reward
        self.stats.update(discounted_return)
        discounted_return[done] = 0.0
        scaled = reward / np.sqrt(self.stats.numpy_views()[1] + self.epsilon)
        return _clip_inplace(scaled, self.clip).astype(np.float32)

    def _one_env(self, reward, discounted_return, done):
        """`forward` for one env in Python floats: the same IEEE double operations in the same order as the
        NumPy path (so the same bits), at a third of its cost on 0-d arrays."""
        mean, var, count = self.stats.numpy_views()
        running = float(discounted_return[0]) * self.gamma + reward
        prior = float(count)
        total = prior + 1
        delta = running - float(mean)
        mean[...] = float(mean) + delta * (1 / total)
        new_var = float(var) * (prior / total) + delta * delta * (prior / (total * total))
        var[...] = new_var
        count[...] = total
        discounted_return[0] = 0.0 if done else running
        scaled = min(max(reward / math.sqrt(new_var + self.epsilon), -self.clip), self.clip)
        return np.array([scaled], dtype=np.float32)


def _clip_inplace(x, bound):
    # Two ufuncs: np.clip's Python wrapper costs more than the clipping on arrays this small.
    return np.minimum(np.maximum(x, -bound, out=x), bound, out=x)
