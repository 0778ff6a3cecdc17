"""Data-parallel runs over torch.distributed: world size and rank, and the collectives the algorithms use.

`torchrun --nproc_per_node=N -m rl.train ...` starts N processes (ranks), each stepping its own envs. With
one process (plain `python -m rl.train`) nothing here is initialized and every helper is the identity, so
the single-process path runs exactly the code it always did.

Collectives on CPU tensors and Python objects go over gloo; on a CUDA learner, tensor collectives go over
NCCL. Every rank computes the same update from the same global quantities, so ranks stay bit-identical:
gloo and NCCL hand every rank the same reduced bytes, and what follows is deterministic.
"""

import datetime
import os
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist

_state = {"world": 1, "rank": 0, "local_rank": 0, "tensor_group": None, "seconds": 0.0}


@contextmanager
def _timed():
    start = time.perf_counter()
    try:
        yield
    finally:
        _state["seconds"] += time.perf_counter() - start


def communication_seconds():
    """Seconds this process has spent in collectives (waiting for the others included)."""
    return _state["seconds"]


def requested():
    """True when this process was started by torchrun (or alike) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank():
    """This process's rank as the launcher set it, before initialization (0 when not launched so)."""
    return int(os.environ.get("RANK", "0"))


def initialize(timeout_minutes=10):
    """Join the process group the launcher describes (env://). Collectives on CPU go over gloo."""
    if not requested() or dist.is_initialized():
        return
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    _state.update(world=dist.get_world_size(), rank=dist.get_rank(),
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def use_device(device):
    """Bind this rank to its device: cuda becomes cuda:<LOCAL_RANK>, and tensor collectives use NCCL there.
    Returns the device string to use."""
    if world_size() == 1 or not device.startswith("cuda"):
        return device
    device = f"cuda:{_state['local_rank']}"
    torch.cuda.set_device(device)
    if _state["tensor_group"] is None:
        _state["tensor_group"] = dist.new_group(backend="nccl")
    return device


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
    _state.update(world=1, rank=0, local_rank=0, tensor_group=None, seconds=0.0)


def world_size():
    return _state["world"]


def rank():
    return _state["rank"]


def is_main():
    return _state["rank"] == 0


def _group(tensor):
    return _state["tensor_group"] if tensor.is_cuda else None


def all_reduce_sum(tensor):
    """Sum over ranks, in place and returned (the identity with one process)."""
    if _state["world"] > 1:
        with _timed():
            dist.all_reduce(tensor, group=_group(tensor))
    return tensor


def all_reduce_mean(tensor):
    """Mean over ranks (the identity with one process)."""
    if _state["world"] > 1:
        with _timed():
            dist.all_reduce(tensor, group=_group(tensor))
        tensor /= _state["world"]
    return tensor


def all_reduce_gradients(parameters):
    """Average the gradients of `parameters` over ranks: one flat all-reduce."""
    if _state["world"] == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_mean(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag):
    """True on every rank when `flag` is true on any (a stop request, a decision that must be shared)."""
    if _state["world"] == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0])
    with _timed():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] with one process)."""
    if _state["world"] == 1:
        return [obj]
    gathered = [None] * _state["world"]
    with _timed():
        dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if _state["world"] == 1:
        return obj
    box = [obj]
    with _timed():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def normalize(values, epsilon=1e-8):
    """(x - mean) / (std + epsilon) with the mean and (unbiased) std of `values` over all ranks."""
    return normalize_each([values], epsilon)[0]


def normalize_each(groups, epsilon=1e-8):
    """`normalize` for each tensor of `groups`, with two collectives for all of them."""
    if _state["world"] == 1:
        return [(values - values.mean()) / (values.std() + epsilon) for values in groups]
    return [(values - mean) / (var ** 0.5 + epsilon) for values, (mean, var) in zip(groups, global_mean_var(groups))]


def global_mean_var(groups):
    """[(mean, unbiased variance)] of each tensor of `groups` over all ranks' elements, as floats.

    Two passes in float64 (the global mean, then the squared deviations from it): on nearly constant data
    (critic targets of a solved task) `sum x^2 - (sum x)^2 / n` cancels to zero or below, this does not.
    """
    sums = all_reduce_sum(torch.stack([torch.stack([v.detach().double().sum(),
                                                    torch.tensor(float(v.numel()), dtype=torch.float64,
                                                                 device=v.device)]) for v in groups]))
    means = (sums[:, 0] / sums[:, 1]).tolist()
    squares = all_reduce_sum(torch.stack([(v.detach().double() - mean).pow(2).sum()
                                          for v, mean in zip(groups, means)])).tolist()
    return [(mean, square / (count - 1)) for mean, square, count in zip(means, squares, sums[:, 1].tolist())]


def explained_variance(predicted, target):
    """1 - Var[target - predicted] / Var[target] over all ranks' samples; NaN when the target is constant."""
    (_, var_target), (_, var_residual) = global_mean_var([target, target - predicted])
    return 1.0 - var_residual / var_target if var_target > 0 else float("nan")


def merge_running_stats(stats, snapshot):
    """Fold every rank's data since `snapshot` (count, mean, var as of the last merge, the same on all
    ranks) into `stats`, identically on every rank (Chan et al.'s parallel merge, in rank order).
    Returns the new snapshot."""
    if _state["world"] == 1:
        return snapshot
    count, mean, var = (t.clone() for t in snapshot)
    own_count = stats.count - count
    own_mean = (stats.count * stats.mean - count * mean) / own_count.clamp_min(1e-12)
    own_m2 = stats.var * stats.count - var * count - (own_mean - mean).pow(2) * count * own_count / stats.count
    for other_count, other_mean, other_m2 in gather_objects((own_count, own_mean, own_m2)):
        if float(other_count) <= 0:
            continue
        total = count + other_count
        delta = other_mean - mean
        m2 = var * count + other_m2 + delta.pow(2) * count * other_count / total
        mean = mean + delta * other_count / total
        var, count = m2 / total, total
    stats.mean.copy_(mean)
    stats.var.copy_(var)
    stats.count.copy_(count)
    return (count.clone(), mean.clone(), var.clone())
