"""rl.rollout.gae against the textbook GAE recursion, written out per env and per scalar."""

import pytest
import torch

from rl.rollout import gae

T, N = 8, 5


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, gae_lambda):
    """delta_t = r_t + gamma * V(s'_t) * [not terminated] - V(s_t);
    A_t = delta_t + gamma * lambda * A_{t+1} * [episode goes on after t]."""
    advantages = [[0.0] * N for _ in range(T)]
    for n in range(N):
        following = 0.0
        for t in reversed(range(T)):
            r, v, nv = float(rewards[t][n]), float(values[t][n]), float(next_values[t][n])
            term, trunc = bool(terminated[t][n]), bool(truncated[t][n])
            if term:
                delta = r - v
            else:
                delta = r + gamma * nv - v
            if term or trunc:
                advantage = delta
            else:
                advantage = delta + gamma * gae_lambda * following
            advantages[t][n] = advantage
            following = advantage
    return advantages


def episode_flags():
    """terminated / truncated (T, N) with episode ends at varied places in each env."""
    terminated = torch.zeros(T, N, dtype=torch.bool)
    truncated = torch.zeros(T, N, dtype=torch.bool)
    # env 0: one episode running through the whole rollout (bootstraps from next_values[-1])
    terminated[0, 1] = True      # env 1: terminates on the first step ...
    truncated[T - 1, 1] = True   # ... and is truncated on the last one
    truncated[2, 2] = True       # env 2: truncated early, terminated later
    terminated[5, 2] = True
    terminated[3, 3] = True      # env 3: terminated and truncated on the same step: no bootstrap
    truncated[3, 3] = True
    truncated[6, 3] = True
    terminated[T - 1, 4] = True  # env 4: terminated on the last step, truncated before
    truncated[1, 4] = True
    truncated[4, 4] = True
    return terminated, truncated


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma,gae_lambda", [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.5, 0.7)])
def test_gae_matches_reference_recursion(dtype, gamma, gae_lambda):
    generator = torch.Generator().manual_seed(0)
    rewards, values, next_values = (torch.randn(T, N, generator=generator, dtype=dtype) for _ in range(3))
    terminated, truncated = episode_flags()
    done = terminated | truncated

    advantages, returns = gae(rewards, values, next_values, terminated, done, gamma, gae_lambda)

    expected = torch.tensor(reference_gae(rewards.tolist(), values.tolist(), next_values.tolist(),
                                          terminated.tolist(), truncated.tolist(), gamma, gae_lambda),
                            dtype=torch.float64)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert advantages.shape == returns.shape == (T, N)
    assert torch.allclose(advantages.double(), expected, atol=tol, rtol=0)
    assert torch.allclose(returns.double(), expected + values.double(), atol=tol, rtol=0)


def test_gae_bootstraps_truncations_but_not_terminations():
    """Changing next_values at a terminated step changes nothing; at a truncated step it changes only
    that step and the earlier steps of the same episode, by the discounted amount."""
    gamma, gae_lambda = 0.9, 0.8
    generator = torch.Generator().manual_seed(1)
    rewards, values, next_values = (torch.randn(T, N, generator=generator, dtype=torch.float64) for _ in range(3))
    terminated, truncated = episode_flags()
    done = terminated | truncated
    base, _ = gae(rewards, values, next_values, terminated, done, gamma, gae_lambda)

    moved = next_values.clone()
    moved[terminated] += 100.0
    advantages, _ = gae(rewards, values, moved, terminated, done, gamma, gae_lambda)
    assert torch.equal(advantages, base)

    # env 2 is truncated at t=2 (its episode covers t=0..2) and terminated at t=5.
    moved = next_values.clone()
    moved[2, 2] += 1.0
    advantages, _ = gae(rewards, values, moved, terminated, done, gamma, gae_lambda)
    change = advantages - base
    expected = torch.zeros(T, N, dtype=torch.float64)
    for t in range(3):
        expected[t, 2] = gamma * (gamma * gae_lambda) ** (2 - t)
    assert torch.allclose(change, expected, atol=1e-12, rtol=0)


def test_gae_with_lambda_one_is_discounted_return_minus_value():
    """With lambda = 1 and no episode end, A_t + V(s_t) is the discounted reward sum plus the bootstrap."""
    gamma = 0.9
    rewards = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    values = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)
    next_values = torch.tensor([[-1.0], [2.0], [10.0]], dtype=torch.float64)
    flags = torch.zeros(3, 1, dtype=torch.bool)
    _, returns = gae(rewards, values, next_values, flags, flags, gamma, 1.0)
    expected = [1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 10, 2 + 0.9 * 3 + 0.81 * 10, 3 + 0.9 * 10]
    assert returns[:, 0].tolist() == pytest.approx(expected, abs=1e-12)
