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
