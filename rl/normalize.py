"""Running statistics kept as module buffers, so they are saved with the policy."""

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

    @torch.no_grad()
    def update(self, batch):
        """Fold a batch (B, *shape) into the statistics."""
        batch = batch.to(self.mean.device, torch.float64)
        batch_count = batch.shape[0]
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, unbiased=False) if batch_count > 1 else torch.zeros_like(batch_mean)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * (batch_count / total)
        m2 = self.var * self.count + batch_var * batch_count + delta.pow(2) * (self.count * batch_count / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)


class ObservationNormalizer(nn.Module):
    """(obs - mean) / std, clipped; `enabled=False` makes it the identity but keeps the buffers."""

    def __init__(self, shape, clip=10.0, enabled=True, epsilon=1e-8):
        super().__init__()
        self.stats = RunningMeanStd(shape)
        self.clip = clip
        self.enabled = enabled
        self.epsilon = epsilon

    def forward(self, obs):
        if not self.enabled:
            return obs
        std = torch.sqrt(self.stats.var + self.epsilon)
        return ((obs - self.stats.mean) / std).clamp(-self.clip, self.clip).to(obs.dtype)

    def update(self, obs):
        if self.enabled:
            self.stats.update(obs)


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
        """Scale reward (N,); update discounted_return (N,) in place and reset it where done."""
        if not self.enabled:
            return reward
        discounted_return.mul_(self.gamma).add_(reward)
        self.stats.update(discounted_return)
        discounted_return.masked_fill_(done, 0.0)
        scaled = reward / torch.sqrt(self.stats.var + self.epsilon)
        return scaled.clamp(-self.clip, self.clip).to(reward.dtype)
