"""Fisher-vector products F v for a policy, F being the Hessian of the mean KL(pi_old || pi) at pi_old.

Two exact implementations over the flat vector of `actor.parameters()`:

- `analytic` (default): F = J^T M J / B, with J the Jacobian of the distribution parameters with respect to
  the weights and M the closed-form Fisher metric of the distribution (Amari 1998; Martens 2014, sec. 9).
  One forward-mode product (J v), the M multiply, and one reverse-mode product (J^T u) per call; the
  reverse pass is linearized once per update, and no second-order graph is ever built.
- `hessian`: the classic double back-propagation of the KL (Schulman et al. 2015), kept for comparison.
"""

import torch
from torch.func import functional_call, jvp, vjp
from torch.nn.utils import parameters_to_vector


def _unflatten(actor, flat):
    tensors, offset = {}, 0
    for name, param in actor.named_parameters():
        n = param.numel()
        tensors[name] = flat[offset:offset + n].view_as(param)
        offset += n
    return tensors


def analytic_fisher_vector_product(actor, obs):
    """Return v -> F v for the actor at its current parameters on observations (B, obs_dim)."""
    flat = parameters_to_vector(actor.parameters()).detach()
    batch = obs.shape[0]

    def distribution_params(weights):
        return functional_call(actor, _unflatten(actor, weights), (obs,))

    old_params, pullback = vjp(distribution_params, flat)
    old_params = tuple(p.detach() for p in old_params)

    def product(vector):
        _, tangents = jvp(distribution_params, (flat,), (vector,))
        (result,) = pullback(actor.fisher_product(old_params, tangents))
        return result / batch

    return product


def hessian_fisher_vector_product(actor, obs):
    """Return v -> F v by differentiating (grad KL) . v a second time."""
    params = [p for p in actor.parameters()]
    with torch.no_grad():
        old_params = actor(obs)
    kl = actor.kl(old_params, actor(obs)).mean()
    grad = parameters_to_vector(torch.autograd.grad(kl, params, create_graph=True))

    def product(vector):
        return parameters_to_vector(torch.autograd.grad(grad @ vector, params, retain_graph=True))

    return product


FISHER_VECTOR_PRODUCTS = {"analytic": analytic_fisher_vector_product, "hessian": hessian_fisher_vector_product}
