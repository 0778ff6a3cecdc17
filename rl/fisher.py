"""Fisher-vector products F v for a policy, F being the Hessian of the mean KL(pi_old || pi) at pi_old.

Two exact implementations over the flat vector of `actor.parameters()`:

- `analytic` (default): F = J^T M J / B, with J the Jacobian of the distribution parameters with respect to
  the weights and M the closed-form Fisher metric of the distribution (Amari 1998; Martens 2014, sec. 9).
  Per call: one Jacobian-vector product (J v), the M multiply, one vector-Jacobian product (J^T u); no
  second-order graph. For our MLP actors, J v and J^T u are written out on Jacobians cached once per update
  (see `_mlp_fisher_vector_product`); any other actor goes through `torch.func.jvp` / `vjp`, which computes
  the same products generically.
- `hessian`: the classic double back-propagation of the KL (Schulman et al. 2015), kept for comparison.
"""

import torch
from torch.func import functional_call, jvp, vjp
from torch.nn.utils import parameters_to_vector

from rl.networks import activation_derivative, plain_mlp
from rl.optim import flatten


def analytic_fisher_vector_product(actor, obs, *memory):
    """Return v -> F v for the actor at its current parameters on observations (B, obs_dim); `memory`: a
    recurrent actor's (state, starts), which the product runs through (the sequences' unrolled graph)."""
    if _is_plain_mlp_actor(actor) and not memory:
        return _mlp_fisher_vector_product(actor, obs)
    return _functional_fisher_vector_product(actor, obs, *memory)


def _is_plain_mlp_actor(actor):
    if plain_mlp(getattr(actor, "net", None)) is None:
        return False
    # Besides the net, at most a state-independent log_std (which nn.Module lists first).
    names = [name for name, _ in actor.named_parameters()]
    expected = [name for name, _ in actor.net.named_parameters(prefix="net")]
    return names in (expected, ["log_std"] + expected)


def _mlp_fisher_vector_product(actor, obs):
    """J^T M J v / B for an MLP actor, both products taken through cached output Jacobians.

    S_i = d(output) / d(pre-activation of layer i), (A, B, H_i), is computed once per update by
    back-propagating the identity through the net. With it neither direction passes through the weights:
    J v = sum_i S_i (x_i dW_i^T + db_i), and layer i's part of J^T u is (sum_a u_a S_i[a])^T x_i. A call
    costs two H x H matrix products per hidden layer plus O(A B H) contractions, against about six
    H x H products for double back-propagation.
    """
    net = actor.net
    linears, activations = plain_mlp(net)
    last = len(linears) - 1
    with torch.no_grad():
        inputs, derivatives, h = [], [], obs  # inputs[i] feeds linears[i]; derivatives[i] follows it
        for i, linear in enumerate(linears):
            inputs.append(h)
            z = linear(h)
            if i < last:
                h = activations[i](z)
                derivatives.append(activation_derivative(activations[i], z, h))
        old_params = tuple(p.clone() for p in actor.head(z))  # no views of parameters
        output_jacobians = [None] * last
        jacobian = linears[last].weight.unsqueeze(1)  # d output / d x_last, (A, 1, H)
        for i in range(last - 1, -1, -1):
            output_jacobians[i] = jacobian * derivatives[i]  # (A, B, H_i)
            if i > 0:
                jacobian = output_jacobians[i] @ linears[i].weight
    shapes = tuple(tuple(p.shape) for p in net.parameters())
    log_std_size = actor.log_std.numel() if hasattr(actor, "log_std") else 0
    cache = (tuple(inputs), tuple(output_jacobians), old_params)

    def fisher_product(vector):
        return _mlp_product(vector, *cache, shapes, log_std_size, actor.fisher_product)

    return fisher_product


@torch.no_grad()
def _mlp_product(vector, inputs, output_jacobians, old_params, shapes, log_std_size, fisher_metric):
    """F v / B from the cached inputs x_i and output Jacobians S_i of `_mlp_fisher_vector_product`."""
    last = len(inputs) - 1
    batch = inputs[0].shape[0]
    log_std_piece, net_vector = vector[:log_std_size], vector[log_std_size:]
    pieces = torch.split(net_vector, [int(torch.Size(shape).numel()) for shape in shapes])
    # J v: each layer's own pre-activation change, carried to the output by its Jacobian.
    output_tangent = torch.addmm(pieces[2 * last + 1], inputs[last], pieces[2 * last].view(shapes[2 * last]).T)
    for i in range(last):
        own = torch.addmm(pieces[2 * i + 1], inputs[i], pieces[2 * i].view(shapes[2 * i]).T)
        for a in range(output_tangent.shape[1]):
            output_tangent[:, a] += (output_jacobians[i][a] * own).sum(-1)
    tangents = (output_tangent, log_std_piece.expand_as(output_tangent)) if log_std_size else (output_tangent,)
    metric = fisher_metric(old_params, tangents)
    # J^T (M J v): each layer's cotangent straight from the same Jacobians.
    cotangent_out = metric[0]
    per_action = cotangent_out.T.unsqueeze(-1)  # (A, B, 1)
    grads = [metric[1].sum(0)] if log_std_size else []
    for i in range(last + 1):
        if i == last:
            cotangent = cotangent_out
        else:
            cotangent = output_jacobians[i][0] * per_action[0]
            for a in range(1, per_action.shape[0]):
                cotangent.addcmul_(output_jacobians[i][a], per_action[a])
        grads.append((cotangent.T @ inputs[i]).reshape(-1))
        grads.append(cotangent.sum(0))
    return torch.cat(grads) / batch


def _unflatten(actor, flat):
    tensors, offset = {}, 0
    for name, param in actor.named_parameters():
        n = param.numel()
        tensors[name] = flat[offset:offset + n].view_as(param)
        offset += n
    return tensors


def _functional_fisher_vector_product(actor, obs, *memory):
    flat = parameters_to_vector(actor.parameters()).detach()
    batch = obs.shape[0]

    def distribution_params(weights):
        return functional_call(actor, _unflatten(actor, weights), (obs, *memory))

    old_params, pullback = vjp(distribution_params, flat)
    old_params = tuple(p.detach() for p in old_params)

    def product(vector):
        _, tangents = jvp(distribution_params, (flat,), (vector,))
        (result,) = pullback(actor.fisher_product(old_params, tangents))
        return result / batch

    return product


def hessian_fisher_vector_product(actor, obs, *memory):
    """Return v -> F v by differentiating (grad KL) . v a second time."""
    params = list(actor.parameters())
    with torch.no_grad():
        old_params = tuple(p.clone() for p in actor(obs, *memory))  # no views of parameters
    kl = actor.kl(old_params, actor(obs, *memory)).mean()
    grad = flatten(torch.autograd.grad(kl, params, create_graph=True))

    def product(vector):
        return flatten(torch.autograd.grad(grad @ vector, params, retain_graph=True))

    return product


FISHER_VECTOR_PRODUCTS = {"analytic": analytic_fisher_vector_product, "hessian": hessian_fisher_vector_product}
