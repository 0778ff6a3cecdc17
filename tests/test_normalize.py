"""Running statistics against numpy on the concatenated data, and the normalizers built on them."""

import numpy as np
import pytest
import torch

from rl.normalize import ObservationNormalizer, RewardScaler, RunningMeanStd

EPSILON = 1e-4  # RunningMeanStd's prior count (mean 0, var 1)


def batches(seed=0):
    """Uneven batch sizes (a single row included), a large offset and per-dimension scales."""
    rng = np.random.default_rng(seed)
    return [rng.normal(loc=[5.0, -3.0, 0.0], scale=[2.0, 0.1, 10.0], size=(size, 3)) for size in (1, 7, 50, 2, 300)]


def test_running_mean_std_matches_numpy_on_concatenated_batches():
    stats = RunningMeanStd((3,), epsilon=EPSILON)
    data = batches()
    for batch in data:
        stats.update(torch.from_numpy(batch).float())
    everything = np.concatenate([b.astype(np.float32).astype(np.float64) for b in data])
    n = len(everything)

    assert stats.count.item() == pytest.approx(n + EPSILON, abs=1e-9)
    assert stats.mean.dtype == stats.var.dtype == torch.float64
    # The prior (count EPSILON at mean 0, var 1) moves the mean by about EPSILON * mean / n and the
    # variance by about EPSILON * (1 + mean^2 - var) / n; allow twice that. A per-batch unbiased variance
    # (about 1% too large here) or a wrong cross term would fail.
    prior_shift = EPSILON * (1.0 + everything.mean(0) ** 2 + everything.var(0)) / n
    assert np.all(np.abs(stats.mean.numpy() - everything.mean(0)) <= 2 * EPSILON * np.abs(everything.mean(0)) / n
                  + 1e-12)
    assert np.all(np.abs(stats.var.numpy() - everything.var(0)) <= 2 * prior_shift + 1e-12)

    # Exactly: the data pooled with the prior (count EPSILON, mean 0, var 1).
    mean = everything.sum(0) / (n + EPSILON)
    var = (EPSILON * 1.0 + EPSILON * mean ** 2 + ((everything - mean) ** 2).sum(0)) / (n + EPSILON)
    assert np.allclose(stats.mean.numpy(), mean, rtol=1e-10, atol=0)
    assert np.allclose(stats.var.numpy(), var, rtol=1e-10, atol=0)


def test_running_mean_std_of_scalars():
    stats = RunningMeanStd(())
    values = np.arange(10.0) ** 2
    for chunk in np.split(values, [3, 4, 9]):
        stats.update(torch.from_numpy(chunk))
    assert stats.mean.item() == pytest.approx(values.mean(), rel=1e-5)
    assert stats.var.item() == pytest.approx(values.var(), rel=1e-5)


def test_observation_normalizer_formula_clip_and_state_dict():
    normalizer = ObservationNormalizer((3,), clip=5.0)
    data = batches(1)
    for batch in data:
        normalizer.update(torch.from_numpy(batch))
    everything = np.concatenate(data)
    obs = torch.tensor([[5.0, -3.0, 0.0], [7.0, -2.9, -10.0], [5.0, 100.0, 1.0]])
    expected = (obs.numpy() - everything.mean(0)) / np.sqrt(everything.var(0) + 1e-8)
    expected = np.clip(expected, -5.0, 5.0)
    out = normalizer(obs)
    assert out.dtype == torch.float32
    assert np.allclose(out.numpy(), expected, atol=1e-3)
    assert out[2, 1].item() == 5.0  # clipped

    # The statistics are buffers: a fresh module loading the state dict normalizes identically.
    state = normalizer.state_dict()
    assert {"stats.mean", "stats.var", "stats.count"} <= set(state)
    copy = ObservationNormalizer((3,), clip=5.0)
    copy.load_state_dict(state)
    assert torch.equal(copy(obs), out)

    disabled = ObservationNormalizer((3,), enabled=False)
    disabled.update(obs)
    assert torch.equal(disabled(obs), obs)
    assert disabled.stats.count.item() == pytest.approx(EPSILON)


@pytest.mark.parametrize("num_envs", [1, 2])  # one env takes a float path of its own
def test_reward_scaler_matches_hand_loop(num_envs):
    gamma, clip = 0.9, 2.0
    rng = np.random.default_rng(2)
    rewards = rng.normal(1.0, 3.0, size=(12, num_envs))
    done = np.zeros((12, num_envs), dtype=bool)
    done[3, 0] = done[7, num_envs - 1] = done[10, 0] = True

    scaler = RewardScaler(gamma, clip)
    discounted = np.zeros(num_envs)
    running = [0.0] * num_envs
    seen = []
    for t in range(12):
        out = scaler(rewards[t], discounted, done[t])
        expected = []
        for n in range(num_envs):
            running[n] = gamma * running[n] + rewards[t, n]
        seen += running
        var = np.var(seen)
        for n in range(num_envs):
            expected.append(float(np.clip(rewards[t, n] / np.sqrt(var + 1e-8), -clip, clip)))
            if done[t, n]:
                running[n] = 0.0
        assert out.tolist() == pytest.approx(expected, rel=2e-3), t
        assert discounted.tolist() == pytest.approx(running, abs=1e-12)

    disabled = RewardScaler(gamma, enabled=False)
    r = np.array([3.0, -4.0])
    assert np.array_equal(disabled(r, np.zeros(2), np.zeros(2, dtype=bool)), r)


def test_reward_scaler_one_env_path_is_the_array_path_bit_for_bit():
    # Runs stay bit-identical to those made before the one-env path existed: same statistics, same outputs.
    fast, arrays = RewardScaler(0.99, clip=5.0), RewardScaler(0.99, clip=5.0)
    rng = np.random.default_rng(3)
    returns_fast, returns_arrays = np.zeros(1), np.zeros(1)
    for _ in range(5000):
        reward = rng.standard_cauchy(1)  # heavy tails reach the clip
        done = rng.random(1) < 0.02
        out = fast(reward, returns_fast, done)
        assert out.tobytes() == arrays._batch(reward, returns_arrays, done).tobytes()
        assert returns_fast.tobytes() == returns_arrays.tobytes()
    for name in ("mean", "var", "count"):
        assert getattr(fast.stats, name).numpy().tobytes() == getattr(arrays.stats, name).numpy().tobytes()


def test_numpy_normalization_matches_torch_forward():
    rng = np.random.default_rng(5)
    normalizer = ObservationNormalizer((4,), clip=1.5)
    normalizer.update(rng.normal(2.0, 3.0, size=(50, 4)))
    obs = rng.normal(2.0, 6.0, size=(7, 4))  # some beyond the clip
    expected = normalizer(torch.from_numpy(obs)).numpy()
    assert np.abs(expected).max() == pytest.approx(1.5)
    assert np.allclose(normalizer.normalize_numpy(obs), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 3])  # one row takes a path of its own
def test_update_and_normalize_is_update_then_normalize_bit_for_bit(dtype, rows):
    fused, apart = ObservationNormalizer((4,), clip=3.0), ObservationNormalizer((4,), clip=3.0)
    rng = np.random.default_rng(5)
    for _ in range(2000):
        obs = (rng.standard_cauchy((rows, 4)) * [1.0, 1e-3, 1e3, 10.0]).astype(dtype)
        out = fused.update_and_normalize(obs)
        apart.update(obs)
        assert out.dtype == np.float32 and out.tobytes() == apart.normalize_numpy(obs).tobytes()
    for name in ("mean", "var", "count"):
        assert getattr(fused.stats, name).numpy().tobytes() == getattr(apart.stats, name).numpy().tobytes()
