"""The gradient step PPO's loss and TRPO's value fit take: fresh gradients, averaged over ranks, clipped to a
global norm, one step of each optimizer.

Written out rather than through `optimizer.zero_grad` and `nn.utils.clip_grad_norm_`: their wrappers (the
profiler hooks, grouping tensors by device) cost more than the arithmetic on a few small MLPs, which runs
hundreds of times an update. The arithmetic is theirs, op for op, so the results are the same bits.
"""

import torch

from rl import distributed


def flatten(tensors):
    """One flat vector of `tensors` in their logical order, whatever their memory layout (a conv weight's
    gradient may be channels-last, which parameters_to_vector's views refuse)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def clip_grad_norm(grads, max_norm):
    """Scale `grads` in place by min(1, max_norm / (||grads|| + 1e-6)), the norm over all of them together (as
    torch.nn.utils.clip_grad_norm_ with foreach=True on tensors of one device and dtype). Returns the norm."""
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def gradient_step(loss, params, optimizers, max_grad_norm=None):
    """Back-propagate `loss` into fresh gradients of `params` (every parameter the optimizers hold), average
    them over ranks, clip their global norm to `max_grad_norm` (None: no clipping), step each optimizer."""
    for param in params:
        param.grad = None
    loss.backward()
    distributed.all_reduce_gradients(params)
    if max_grad_norm is not None:
        clip_grad_norm([p.grad for p in params if p.grad is not None], float(max_grad_norm))
    for optimizer in optimizers:
        optimizer.step()
