"""rl.distributions against torch.distributions, and the closed-form Fisher products against the
Hessian of the KL at old == new (float64 autograd)."""

import pytest
import torch
from torch.autograd.functional import hessian
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence

from rl import distributions as D

BATCH_SHAPES = [(1,), (7,), (3, 4)]


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def reference_gaussian(mean, log_std):
    return Independent(Normal(mean, log_std.exp().expand_as(mean)), 1)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
@pytest.mark.parametrize("shared_log_std", [True, False])
def test_gaussian_log_prob_entropy_kl(batch, shared_log_std):
    g, A = generator(), 3
    mean, old_mean = randn(*batch, A, g=g), randn(*batch, A, g=g)
    std_shape = (A,) if shared_log_std else (*batch, A)  # state-independent log-std broadcasts over the batch
    log_std, old_log_std = randn(*std_shape, g=g, scale=0.5), randn(*std_shape, g=g, scale=0.5)
    action = randn(*batch, A, g=g, scale=2.0)

    expected_log_prob = Normal(mean, log_std.exp()).log_prob(action).sum(-1)
    log_prob = D.gaussian_log_prob(mean, log_std, action)
    assert log_prob.shape == batch
    assert torch.allclose(log_prob, expected_log_prob, atol=1e-12, rtol=0)
    assert torch.allclose(log_prob, reference_gaussian(mean, log_std).log_prob(action), atol=1e-12, rtol=0)

    entropy = D.gaussian_entropy(mean, log_std)
    assert entropy.shape == batch
    assert torch.allclose(entropy, reference_gaussian(mean, log_std).entropy(), atol=1e-12, rtol=0)

    kl = D.gaussian_kl(old_mean, old_log_std, mean, log_std)
    expected_kl = kl_divergence(reference_gaussian(old_mean, old_log_std), reference_gaussian(mean, log_std))
    assert kl.shape == batch
    assert torch.allclose(kl, expected_kl, atol=1e-12, rtol=0)
    assert torch.all(kl > 0)
    assert torch.allclose(D.gaussian_kl(mean, log_std, mean, log_std), torch.zeros(batch, dtype=torch.float64))


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_categorical_log_prob_entropy_kl(batch):
    g, K = generator(1), 5
    logits, old_logits = randn(*batch, K, g=g, scale=2.0), randn(*batch, K, g=g, scale=2.0)
    action = torch.randint(K, batch, generator=g)

    reference = Categorical(logits=logits)
    log_prob = D.categorical_log_prob(logits, action)
    assert log_prob.shape == batch
    assert torch.allclose(log_prob, reference.log_prob(action), atol=1e-12, rtol=0)
    # Actions stored as floats (as a generic buffer might) give the same answer.
    assert torch.allclose(D.categorical_log_prob(logits, action.double()), reference.log_prob(action))

    assert torch.allclose(D.categorical_entropy(logits), reference.entropy(), atol=1e-12, rtol=0)

    kl = D.categorical_kl(old_logits, logits)
    assert kl.shape == batch
    assert torch.allclose(kl, kl_divergence(Categorical(logits=old_logits), reference), atol=1e-12, rtol=0)
    # Logits are defined up to a constant: shifting them changes nothing.
    assert torch.allclose(D.categorical_kl(old_logits + 3.0, logits - 7.0), kl, atol=1e-12, rtol=0)


def test_samplers_follow_their_distributions():
    torch.manual_seed(0)
    mean, log_std = torch.tensor([[1.0, -2.0]]), torch.tensor([0.0, -1.0])
    samples = D.gaussian_sample(mean.expand(200_000, 2), log_std.expand(200_000, 2))
    assert torch.allclose(samples.mean(0), mean[0], atol=0.01)
    assert torch.allclose(samples.std(0), log_std.exp(), atol=0.01)

    probs = torch.tensor([0.1, 0.6, 0.3])
    draws = D.categorical_sample(probs.log().expand(200_000, 3))
    assert draws.dtype == torch.int64
    assert torch.allclose(torch.bincount(draws, minlength=3) / 200_000.0, probs, atol=0.01)


@pytest.mark.parametrize("B,A", [(1, 1), (4, 3)])
def test_gaussian_fisher_product_is_kl_hessian(B, A):
    g = generator(2)
    mean, log_std = randn(B, A, g=g), randn(B, A, g=g, scale=0.5)
    mean_tangent, log_std_tangent = randn(B, A, g=g), randn(B, A, g=g)

    def kl_of_new(flat):  # KL(old || new) summed over the batch, as a function of all new parameters
        new_mean, new_log_std = flat[:B * A].reshape(B, A), flat[B * A:].reshape(B, A)
        return kl_divergence(reference_gaussian(mean, log_std), reference_gaussian(new_mean, new_log_std)).sum()

    H = hessian(kl_of_new, torch.cat([mean.flatten(), log_std.flatten()]))
    expected = H @ torch.cat([mean_tangent.flatten(), log_std_tangent.flatten()])

    mean_product, log_std_product = D.gaussian_fisher_product(mean, log_std, mean_tangent, log_std_tangent)
    assert mean_product.shape == log_std_product.shape == (B, A)
    assert torch.allclose(torch.cat([mean_product.flatten(), log_std_product.flatten()]), expected,
                          atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("B,K", [(1, 2), (4, 5)])
def test_categorical_fisher_product_is_kl_hessian(B, K):
    g = generator(3)
    logits, tangent = randn(B, K, g=g, scale=1.5), randn(B, K, g=g)

    def kl_of_new(flat):
        new = flat.reshape(B, K)
        return kl_divergence(Categorical(logits=logits), Categorical(logits=new)).sum()

    H = hessian(kl_of_new, logits.flatten())
    expected = (H @ tangent.flatten()).reshape(B, K)
    product = D.categorical_fisher_product(logits, tangent)
    assert product.shape == (B, K)
    assert torch.allclose(product, expected, atol=1e-10, rtol=1e-10)


SIZES = (3, 2, 4)  # a MultiDiscrete([3, 2, 4]) action


def reference_multi_categorical(logits):
    """One torch Categorical per block (the dimensions are independent)."""
    return [Categorical(logits=block) for block in torch.split(logits, list(SIZES), -1)]


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_multi_categorical_log_prob_entropy_kl(batch):
    g = generator(4)
    logits, old_logits = randn(*batch, sum(SIZES), g=g, scale=2.0), randn(*batch, sum(SIZES), g=g, scale=2.0)
    action = torch.stack([torch.randint(k, batch, generator=g) for k in SIZES], -1)
    reference, old_reference = reference_multi_categorical(logits), reference_multi_categorical(old_logits)

    log_prob = D.multi_categorical_log_prob(logits, action, SIZES)
    assert log_prob.shape == batch
    expected = sum(r.log_prob(action[..., d]) for d, r in enumerate(reference))
    assert torch.allclose(log_prob, expected, atol=1e-12, rtol=0)
    assert torch.allclose(D.multi_categorical_entropy(logits, SIZES), sum(r.entropy() for r in reference),
                          atol=1e-12, rtol=0)
    kl = D.multi_categorical_kl(old_logits, logits, SIZES)
    assert torch.allclose(kl, sum(kl_divergence(o, r) for o, r in zip(old_reference, reference)), atol=1e-12, rtol=0)
    assert torch.all(kl > 0)
    mode = D.multi_categorical_mode(logits, SIZES)
    assert mode.shape == (*batch, len(SIZES))
    assert all(torch.equal(mode[..., d], r.probs.argmax(-1)) for d, r in enumerate(reference))


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_bernoulli_log_prob_entropy_kl(batch):
    g, N = generator(5), 4
    logits, old_logits = randn(*batch, N, g=g, scale=3.0), randn(*batch, N, g=g, scale=3.0)
    action = torch.randint(2, (*batch, N), generator=g)
    reference = Independent(Bernoulli(logits=logits), 1)

    log_prob = D.bernoulli_log_prob(logits, action)
    assert log_prob.shape == batch
    assert torch.allclose(log_prob, reference.log_prob(action.double()), atol=1e-12, rtol=0)
    assert torch.allclose(D.bernoulli_entropy(logits), reference.entropy(), atol=1e-12, rtol=0)
    kl = D.bernoulli_kl(old_logits, logits)
    assert torch.allclose(kl, kl_divergence(Independent(Bernoulli(logits=old_logits), 1), reference), atol=1e-12,
                          rtol=0)
    assert torch.all(kl > 0)
    assert torch.equal(D.bernoulli_mode(logits), (reference.base_dist.probs > 0.5).long())
    # Large logits stay finite (no log(0)): the closed forms go through softplus.
    big = torch.tensor([[60.0, -60.0]], dtype=torch.float64)
    assert torch.isfinite(D.bernoulli_log_prob(big, torch.tensor([[0, 1]]))).all()
    assert torch.isfinite(D.bernoulli_kl(big, -big)).all()


def test_multi_categorical_and_bernoulli_samplers_follow_their_distributions():
    torch.manual_seed(1)
    probs = [torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.9, 0.1])]
    logits = torch.cat([p.log() for p in probs]).expand(200_000, 5)
    draws = D.multi_categorical_sample(logits, (3, 2))
    assert draws.shape == (200_000, 2) and draws.dtype == torch.int64
    for d, p in enumerate(probs):
        assert torch.allclose(torch.bincount(draws[:, d], minlength=len(p)) / 200_000.0, p, atol=0.01)
    p = torch.tensor([0.1, 0.5, 0.8])
    flips = D.bernoulli_sample(torch.logit(p).expand(200_000, 3))
    assert flips.dtype == torch.int64 and set(flips.unique().tolist()) <= {0, 1}
    assert torch.allclose(flips.double().mean(0), p.double(), atol=0.01)


@pytest.mark.parametrize("B", [1, 4])
def test_multi_categorical_fisher_product_is_kl_hessian(B):
    g = generator(6)
    logits, tangent = randn(B, sum(SIZES), g=g, scale=1.5), randn(B, sum(SIZES), g=g)

    def kl_of_new(flat):
        new = flat.reshape(B, sum(SIZES))
        return sum(kl_divergence(o, r) for o, r in zip(reference_multi_categorical(logits),
                                                       reference_multi_categorical(new))).sum()

    expected = (hessian(kl_of_new, logits.flatten()) @ tangent.flatten()).reshape(B, sum(SIZES))
    product = D.multi_categorical_fisher_product(logits, tangent, SIZES)
    assert product.shape == (B, sum(SIZES))
    assert torch.allclose(product, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("B,N", [(1, 1), (4, 3)])
def test_bernoulli_fisher_product_is_kl_hessian(B, N):
    g = generator(7)
    logits, tangent = randn(B, N, g=g, scale=1.5), randn(B, N, g=g)

    def kl_of_new(flat):
        return kl_divergence(Independent(Bernoulli(logits=logits), 1),
                             Independent(Bernoulli(logits=flat.reshape(B, N)), 1)).sum()

    expected = (hessian(kl_of_new, logits.flatten()) @ tangent.flatten()).reshape(B, N)
    assert torch.allclose(D.bernoulli_fisher_product(logits, tangent), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_categoricals_are_the_categoricals_on_the_valid_actions(dtype):
    # The reference: torch's Categorical on each row's valid logits alone (no masking constant involved).
    g, K, B = generator(7), 6, 40
    raw, old_raw = randn(B, K, g=g, scale=3.0).to(dtype), randn(B, K, g=g, scale=3.0).to(dtype)
    mask = (torch.rand(B, K, generator=g) < 0.5).to(dtype)
    mask[torch.arange(B), torch.randint(K, (B,), generator=g)] = 1.0
    logits, old_logits = D.masked_logits(raw, mask), D.masked_logits(old_raw, mask)
    draws = D.categorical_sample(logits.repeat(500, 1))
    assert mask.repeat(500, 1).gather(1, draws[:, None]).min() == 1.0  # 20,000 draws: never a masked action
    assert (mask.gather(1, logits.argmax(-1, keepdim=True)) == 1.0).all()  # nor the mode
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for i in range(B):
        valid = mask[i] > 0.5
        reference, old = Categorical(logits=raw[i][valid]), Categorical(logits=old_raw[i][valid])
        actions = torch.arange(K)[valid]
        assert torch.allclose(D.categorical_log_prob(logits[i].expand(len(actions), K), actions),
                              reference.log_prob(torch.arange(len(actions))), atol=tolerance, rtol=0)
        assert torch.allclose(D.categorical_entropy(logits[i]), reference.entropy(), atol=tolerance, rtol=0)
        assert torch.allclose(D.categorical_kl(old_logits[i], logits[i]), kl_divergence(old, reference),
                              atol=tolerance, rtol=0)
    for value in (D.categorical_entropy(logits), D.categorical_kl(old_logits, logits)):
        assert torch.isfinite(value).all()


def test_masked_multi_categoricals_are_the_categoricals_on_each_blocks_valid_actions():
    # The reference: per action dimension, torch's Categorical on that block's valid logits alone.
    g, sizes, B = generator(8), (3, 4, 2), 30
    K = sum(sizes)
    raw, old_raw = randn(B, K, g=g, scale=3.0), randn(B, K, g=g, scale=3.0)
    mask = (torch.rand(B, K, generator=g) < 0.5).double()
    start = 0
    for size in sizes:  # at least one valid action per block
        mask[torch.arange(B), start + torch.randint(size, (B,), generator=g)] = 1.0
        start += size
    logits, old_logits = D.masked_logits(raw, mask), D.masked_logits(old_raw, mask)
    draws = D.multi_categorical_sample(logits.repeat(300, 1), sizes)
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    assert mask.repeat(300, 1).gather(1, draws + offsets).min() == 1.0  # 9,000 draws: never a masked action
    assert mask.gather(1, D.multi_categorical_mode(logits, sizes) + offsets).min() == 1.0
    for i in range(B):
        blocks = []
        for size, offset in zip(sizes, offsets.tolist()):
            valid = mask[i, offset:offset + size] > 0.5
            blocks.append((torch.arange(size)[valid], Categorical(logits=raw[i, offset:offset + size][valid]),
                           Categorical(logits=old_raw[i, offset:offset + size][valid])))
        # every combination of valid actions: the log-probability is the sum of each block's
        for combo in torch.cartesian_prod(*[torch.arange(len(actions)) for actions, _, _ in blocks]):
            action = torch.stack([actions[j] for (actions, _, _), j in zip(blocks, combo)])
            expected = sum(new.log_prob(j) for (_, new, _), j in zip(blocks, combo))
            got = D.multi_categorical_log_prob(logits[i:i + 1], action[None], sizes)[0]
            assert torch.allclose(got, expected, atol=1e-12, rtol=0)
        entropy = sum(new.entropy() for _, new, _ in blocks)
        kl = sum(kl_divergence(old, new) for _, new, old in blocks)
        assert torch.allclose(D.multi_categorical_entropy(logits[i:i + 1], sizes)[0], entropy, atol=1e-12, rtol=0)
        assert torch.allclose(D.multi_categorical_kl(old_logits[i:i + 1], logits[i:i + 1], sizes)[0], kl,
                              atol=1e-12, rtol=0)
