"""Numbers a run cannot trust: NaN or infinity in what the envs return, in an update, or in what is saved.

A run stops at the first one with a message naming where it came from; it never writes it to a checkpoint.
"""

import copy

import numpy as np
import torch


class NonFiniteError(ArithmeticError):
    """A NaN or infinity where a run needs finite numbers; the message is one line."""


def check_env_output(name, values, first_step, env_indices):
    """Raise NonFiniteError if `values` (N, ...), row i from sub-env env_indices[i], hold NaN or inf.

    `first_step` is the global step of sub-env 0's transition in this vector step; the message names the
    sub-env and the global step of its transition.
    """
    if np.isfinite(values).all():
        return
    rows = np.asarray(values, dtype=np.float64).reshape(len(env_indices), -1)
    row = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
    shown = rows[row][~np.isfinite(rows[row])][0]
    index = int(env_indices[row])
    raise NonFiniteError(f"non-finite {name} ({shown}) from sub-env {index} at global step {first_step + index}")


def check_finite_tensors(what, tensors):
    """Raise NonFiniteError naming `what` if any floating-point tensor in `tensors` holds NaN or inf."""
    floating = [t.detach() for t in tensors if torch.is_floating_point(t)]
    if floating and not bool(torch.stack([torch.isfinite(t).all() for t in floating]).all()):
        raise NonFiniteError(f"non-finite values in {what}")


# Metrics an update back-propagates: NaN there is damage. Every other metric is a diagnostic, which may be
# undefined (explained variance of constant returns) without harming the run.
BACK_PROPAGATED = ("losses/policy_loss", "losses/value_loss", "losses/entropy")


def first_non_finite(agent, optimizers, metrics):
    """What an update left non-finite that can corrupt the run, named for a message, or None: a back-propagated
    loss, the weights, the normalizer statistics or an optimizer's state."""
    for name in BACK_PROPAGATED:
        if name in metrics and not np.isfinite(metrics[name]):
            return name
    if not _all_finite(agent.parameters()):
        return "the weights"
    if not _all_finite(agent.buffers()):
        return "the normalizer statistics"
    for name, optimizer in optimizers.items():
        if not _all_finite(t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)):
            return f"the {name} optimizer's state"
    return None


def guarded_update(agent, optimizers, update, nan_policy, where):
    """`update()`'s metrics and whether it was undone. An update that leaves a NaN or inf where it can corrupt
    the run raises NonFiniteError (naming `where`, e.g. the iteration), or with `nan_policy=skip_update` is
    undone: weights and optimizer states as before it, its non-finite metrics dropped."""
    before = None
    if nan_policy == "skip_update":
        before = (copy.deepcopy(agent.state_dict()), [copy.deepcopy(o.state_dict()) for o in optimizers.values()])
    metrics = update()
    bad = first_non_finite(agent, optimizers, metrics)
    if bad is None:
        return metrics, False
    if before is None:
        raise NonFiniteError(f"{where} made {bad} non-finite; nan_policy=skip_update would undo such updates "
                             "and go on")
    agent.load_state_dict(before[0])
    for optimizer, state in zip(optimizers.values(), before[1]):
        optimizer.load_state_dict(state)
    return {k: v for k, v in metrics.items() if np.isfinite(v)}, True


def _all_finite(tensors):
    floating = [t.detach().reshape(-1) for t in tensors if torch.is_floating_point(t)]
    return not floating or bool(torch.isfinite(torch.cat(floating)).all())
