"""Trust Region Policy Optimization (Schulman et al. 2015) and the natural policy gradient (Kakade 2001).

Both take the natural-gradient direction x = (F + damping I)^-1 g from conjugate gradient on Fisher-vector
products. TRPO scales it to the trust-region boundary and backtracks until the KL constraint holds and the
surrogate improves; NPG (`algo.name == "npg"`) takes a fixed step `step_size * x` with no search.
The value function is fitted separately with its own Adam optimizer.
"""

import torch
from torch.nn.utils import parameters_to_vector

from rl import distributed
from rl.cg import conjugate_gradient
from rl.fisher import FISHER_VECTOR_PRODUCTS
from rl.optim import flatten, gradient_step
from rl.rollout import explained_variance, minibatch_indices


def surrogate(actor, dist_params, actions, old_log_probs, advantages):
    """L(theta) = mean(pi_theta(a|s) / pi_old(a|s) * A)."""
    return (torch.exp(actor.log_prob(*dist_params, actions) - old_log_probs) * advantages).mean()


def natural_direction(actor, obs, policy_gradient, cfg, generator=None, memory=()):
    """Solve (F + damping I) x = g by CG. Returns (x, fisher_product, residual, iterations).

    `fisher_product` is the undamped v -> F v (on the `fvp_subsample` share of `obs`), for scaling the step.
    `memory`: a recurrent actor's (states, starts): the products run through its whole sequences.
    """
    if cfg.fvp_subsample < 1.0:
        count = max(1, round(cfg.fvp_subsample * obs.shape[0]))
        obs = obs[torch.randperm(obs.shape[0], device=obs.device, generator=generator)[:count]]
    fisher_product = FISHER_VECTOR_PRODUCTS[cfg.fvp](actor, obs, *memory)
    if distributed.world_size() > 1:  # F of the global batch: the mean of the ranks' products
        local_product = fisher_product

        def fisher_product(vector):
            return distributed.all_reduce_mean(local_product(vector))
    damping = cfg.cg_damping

    def damped(vector):
        return fisher_product(vector) + damping * vector

    direction, residual, iterations = conjugate_gradient(damped, policy_gradient, cfg.cg_iters, cfg.cg_tol)
    return direction, fisher_product, residual, iterations


@torch.no_grad()
def assign(actor, flat):
    """Write a flat vector into the actor's parameters in place (the tensors stay the module's own)."""
    offset = 0
    for param in actor.parameters():
        param.copy_(flat[offset:offset + param.numel()].view_as(param))
        offset += param.numel()


def trust_region_step(direction, fisher_product, max_kl, damping=0.0):
    """Scale x so the quadratic model of the KL reaches the boundary: s = sqrt(2 max_kl / x^T (F + d I) x) x.

    With `damping` d = 0 (the textbook TRPO) the model is the KL's own; sb3-contrib sizes the step with the
    damped matrix CG solved against, a shorter step that overshoots the boundary less often.
    """
    curvature = direction @ fisher_product(direction) + damping * (direction @ direction)
    return torch.sqrt(2.0 * max_kl / curvature.clamp_min(1e-12)) * direction


def line_search(actor, old_flat, full_step, expected_improvement, evaluate, cfg):
    """Backtrack theta_old + shrink^j * full_step, j = 0, 1, ...

    Accept the first candidate whose mean KL is <= max_kl, whose surrogate improves, and whose improvement
    is at least `line_search_accept_ratio` of the linear prediction. If none qualifies, restore theta_old
    exactly. `evaluate()` returns (kl, improvement) for the actor's current parameters.
    Returns (steps_backtracked or -1, kl, improvement).
    """
    fraction = 1.0
    for j in range(cfg.line_search_max_steps):
        assign(actor, old_flat + fraction * full_step)
        kl, improvement = (float(t) for t in evaluate())  # one host sync per candidate
        if kl <= cfg.max_kl and improvement > 0 and improvement >= (
                cfg.line_search_accept_ratio * fraction * expected_improvement):
            return j, kl, improvement
        fraction *= cfg.line_search_shrink
    assign(actor, old_flat)
    return -1, 0.0, 0.0


def policy_step(actor, batch, cfg, generator=None):
    """One natural-gradient step of the actor on `batch`. Returns a dict of float metrics.

    Over several ranks (equal batch shards), the advantage statistics, the policy gradient, every
    Fisher-vector product and the KL and surrogate of every line-search candidate are global means, so every
    rank takes the same step, the one a single process holding the whole batch would take.
    """
    obs, actions = batch.obs, batch.actions
    advantages = batch.advantages
    if cfg.normalize_advantages:
        advantages = distributed.normalize(advantages)
    params = list(actor.parameters())
    memory = batch.memory("actor")  # () feed-forward; a recurrent actor unrolls each env's whole rollout
    dist = actor(obs, *memory)
    # Cloned: Gaussian log_std comes out as a view of the parameter, which the line search overwrites.
    old_dist = tuple(p.detach().clone() for p in dist)
    # Recomputed rather than read from the batch, so the ratio at theta_old is exactly 1.
    old_log_probs = actor.log_prob(*old_dist, actions)
    entropy = distributed.all_reduce_mean(actor.entropy(*old_dist).mean().detach())
    objective = surrogate(actor, dist, actions, old_log_probs, advantages)
    gradient = distributed.all_reduce_mean(flatten(torch.autograd.grad(objective, params)))
    direction, fisher_product, residual, iterations = natural_direction(actor, obs, gradient, cfg, generator, memory)
    old_flat = parameters_to_vector(params).detach()
    old_log_std = actor.log_std.detach().clone() if hasattr(actor, "log_std") else None
    objective = objective.detach()

    def evaluate():
        with torch.no_grad():
            dist = actor(obs, *memory)
            kl = actor.kl(old_dist, dist).mean()
            improvement = surrogate(actor, dist, actions, old_log_probs, advantages) - objective
            if distributed.world_size() > 1:
                kl, improvement = distributed.all_reduce_mean(torch.stack([kl, improvement]))
            return kl, improvement

    if cfg.name == "npg":
        step = cfg.step_size * direction
        assign(actor, old_flat + step)
        kl, improvement = evaluate()
        steps, expected = 0, gradient @ step
        kl, improvement = float(kl), float(improvement)
    else:
        damping = cfg.cg_damping if cfg.step_curvature == "damped" else 0.0
        step = trust_region_step(direction, fisher_product, cfg.max_kl, damping)
        expected = gradient @ step
        steps, kl, improvement = line_search(actor, old_flat, step, float(expected), evaluate, cfg)
    metrics = {
        "trpo/kl": kl,
        "trpo/surrogate_improvement": improvement,
        "trpo/expected_improvement": float(expected),
        "trpo/line_search_steps": steps,
        "trpo/step_norm": float(step.norm()),
        "trpo/cg_residual": float(residual),
        # Residual over ||g||: how far from solved the direction is, comparable across updates and runs.
        "trpo/cg_relative_residual": float(residual / gradient.norm().clamp_min(1e-30)),
        "trpo/cg_iterations": int(iterations),
        "losses/policy_loss": -float(distributed.all_reduce_mean(objective)),
        "losses/entropy": float(entropy),
    }
    if old_log_std is not None:
        # The part of the step's KL spent on the (state-independent) std alone: sum_d of
        # KL(N(0, s_old^2) || N(0, s^2)). A large share shrinks exploration fast (docs/studies/hopper.md).
        change = (actor.log_std.detach() - old_log_std).double()
        metrics["trpo/kl_from_std"] = float((0.5 * torch.exp(-2.0 * change) - 0.5 + change).sum())
    return metrics


def fit_value(critic, optimizer, batch, cfg, generator):
    """`vf_iters` epochs of shuffled minibatches of 0.5 * (V(s) - return)^2. Returns the mean loss.

    Minibatches as PPO's (see minibatch_indices; whole chunks for a recurrent critic); over several ranks the
    gradients are averaged.
    """
    total = torch.zeros((), device=batch.obs.device)
    count = 0
    params, max_grad_norm = list(critic.parameters()), cfg.max_grad_norm  # read once, not per minibatch
    optimizer_list = [optimizer]
    for _ in range(cfg.vf_iters):
        for obs, memory, returns in _value_minibatches(batch, cfg, generator):
            loss = 0.5 * (critic(obs, *memory) - returns).pow(2).mean()
            gradient_step(loss, params, optimizer_list, max_grad_norm)
            total += loss.detach()
            count += 1
    return float(distributed.all_reduce_mean(total)) / count


def _value_minibatches(batch, cfg, generator):
    """One epoch of (obs, the critic's memory, returns) minibatches: only what the value loss reads."""
    if batch.starts is not None:
        for mb in batch.sequence_minibatches(cfg.vf_minibatches, cfg.sequence_length, generator):
            yield mb.obs, mb.memory("critic"), mb.returns
        return
    num_steps = len(batch) // batch.num_envs
    indices = minibatch_indices(num_steps, batch.num_envs, cfg.vf_minibatches, generator, batch.obs.device)
    order, size = indices.reshape(-1), indices.shape[1]
    obs, returns = batch.obs[order], batch.returns[order]
    for first in range(0, order.numel(), size):
        yield obs[first:first + size], (), returns[first:first + size]


def make_optimizers(agent, cfg):
    # fused: one kernel per step instead of a loop of ops (20% faster per value-fit minibatch on a CPU).
    return {"critic": torch.optim.Adam(agent.critic.parameters(), lr=cfg.learning_rate, fused=True)}


def update(agent, optimizers, batch, cfg, generator, fraction_left=1.0):
    """The natural-gradient policy step, then the value fit (whose learning rate train.py anneals)."""
    metrics = policy_step(agent.actor, batch, cfg, generator)
    metrics["losses/value_loss"] = fit_value(agent.critic, optimizers["critic"], batch, cfg, generator)
    metrics["losses/explained_variance"] = float(explained_variance(batch.values, batch.returns))
    return metrics


