"""Closed-form action distributions as pure functions of their parameters.

We do not build `torch.distributions` objects in the hot loop: their argument validation and
object construction cost more than the math. Each function is tested against
`torch.distributions` in tests/test_distributions.py.

Shapes: B = batch, A = action dimensions, K = number of discrete actions.
"""

import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# Diagonal Gaussian: parameters (mean (B, A), log_std (B, A) or (A,)).

def gaussian_sample(mean, log_std):
    return torch.addcmul(mean, log_std.exp(), torch.randn_like(mean))


def gaussian_log_prob(mean, log_std, action):
    """log pi(a|s) summed over action dimensions -> (B,)."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(mean, log_std):
    """Entropy -> (B,)."""
    return (log_std + 0.5 + LOG_SQRT_2PI).expand_as(mean).sum(-1)


def gaussian_kl(old_mean, old_log_std, mean, log_std):
    """KL(old || new) -> (B,)."""
    var_ratio = torch.exp(2.0 * (old_log_std - log_std))
    mean_term = ((old_mean - mean) * torch.exp(-log_std)).pow(2)
    return 0.5 * (var_ratio + mean_term - 1.0 - 2.0 * (old_log_std - log_std)).sum(-1)


def gaussian_fisher_product(mean, log_std, mean_tangent, log_std_tangent):
    """Fisher metric of the Gaussian in (mean, log_std) coordinates applied to a tangent.

    Per dimension the metric is diagonal: 1/sigma^2 for the mean and 2 for log_std.
    """
    return mean_tangent * torch.exp(-2.0 * log_std), 2.0 * log_std_tangent


# Categorical: parameter logits (B, K).

def categorical_sample(logits):
    return torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)


def categorical_log_prob(logits, action):
    log_p = torch.log_softmax(logits, -1)
    return log_p.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits):
    log_p = torch.log_softmax(logits, -1)
    return -(log_p.exp() * log_p).sum(-1)


def categorical_kl(old_logits, logits):
    old_log_p = torch.log_softmax(old_logits, -1)
    log_p = torch.log_softmax(logits, -1)
    return (old_log_p.exp() * (old_log_p - log_p)).sum(-1)


def categorical_fisher_product(logits, logits_tangent):
    """(diag(p) - p p^T) v: the Fisher metric of a softmax in logit coordinates."""
    p = torch.softmax(logits, -1)
    return p * logits_tangent - p * (p * logits_tangent).sum(-1, keepdim=True)


# Action masks: a masked logit is MASKED_LOGIT, whose probability is exactly 0 in float32 and float64
# (exp(-1e8) underflows) while p * log p stays 0 rather than 0 * -inf = NaN (MaskablePPO's value). Every
# categorical function above then works on the masked distribution as it is: a masked action is never
# sampled, its entropy and KL terms vanish, and its rows of the Fisher metric diag(p) - p p^T are zero.

MASKED_LOGIT = -1e8


def masked_logits(logits, mask):
    """Logits (B, K) with the entries where mask (B, K) is 0 set to MASKED_LOGIT."""
    return torch.where(mask > 0.5, logits, torch.full_like(logits, MASKED_LOGIT))


# Multi-categorical (a MultiDiscrete action): logits (B, sum(sizes)), one block of sizes[d] per dimension d;
# actions (B, D). The dimensions are independent, so every quantity is the sum of one categorical's per block
# and the Fisher metric is block-diagonal.

def _blocks(logits, sizes):
    return torch.split(logits, list(sizes), dim=-1)


def multi_categorical_sample(logits, sizes):
    return torch.stack([categorical_sample(block) for block in _blocks(logits, sizes)], -1)


def multi_categorical_mode(logits, sizes):
    return torch.stack([block.argmax(-1) for block in _blocks(logits, sizes)], -1)


def multi_categorical_log_prob(logits, action, sizes):
    return sum(categorical_log_prob(block, action[..., d]) for d, block in enumerate(_blocks(logits, sizes)))


def multi_categorical_entropy(logits, sizes):
    return sum(categorical_entropy(block) for block in _blocks(logits, sizes))


def multi_categorical_kl(old_logits, logits, sizes):
    return sum(categorical_kl(old, new) for old, new in zip(_blocks(old_logits, sizes), _blocks(logits, sizes)))


def multi_categorical_fisher_product(logits, logits_tangent, sizes):
    return torch.cat([categorical_fisher_product(block, tangent) for block, tangent in
                      zip(_blocks(logits, sizes), _blocks(logits_tangent, sizes))], -1)


# Independent Bernoullis (a MultiBinary action): logits (B, N), actions (B, N) in {0, 1}. With
# log p = -softplus(-l) and log(1 - p) = -softplus(l), nothing overflows for large |l|.

def bernoulli_sample(logits):
    return (torch.rand_like(logits) < torch.sigmoid(logits)).long()


def bernoulli_mode(logits):
    return (logits > 0).long()


def bernoulli_log_prob(logits, action):
    """sum_i a_i l_i - softplus(l_i) -> (B,)."""
    return (action.to(logits.dtype) * logits - torch.nn.functional.softplus(logits)).sum(-1)


def bernoulli_entropy(logits):
    """sum_i softplus(l_i) - p_i l_i -> (B,)."""
    return (torch.nn.functional.softplus(logits) - torch.sigmoid(logits) * logits).sum(-1)


def bernoulli_kl(old_logits, logits):
    softplus = torch.nn.functional.softplus
    old_p = torch.sigmoid(old_logits)
    return (old_p * (softplus(-logits) - softplus(-old_logits))
            + (1 - old_p) * (softplus(logits) - softplus(old_logits))).sum(-1)


def bernoulli_fisher_product(logits, logits_tangent):
    """p (1 - p) v per dimension: the Fisher metric of a Bernoulli in logit coordinates."""
    p = torch.sigmoid(logits)
    return p * (1 - p) * logits_tangent
