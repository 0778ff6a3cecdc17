"""Checkpoints: atomic writes, loads that never run pickled code, and the `latest` pointer.

A checkpoint is a dict of tensors and plain Python values, read back with `torch.load(weights_only=True)`,
which refuses anything that would execute code while unpickling.
"""

import os
import random

import numpy as np
import torch

FORMAT_VERSION = 2
REQUIRED_KEYS = {"format_version": int, "config": str, "agent": dict, "optimizers": dict, "iteration": int,
                 "global_step": int, "wall_seconds": float, "rng": dict, "collector": dict,
                 "env_snapshots": (list, type(None)), "best_eval": dict, "recent_returns": torch.Tensor}
LATEST = "latest"
BEST = "best.pt"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line."""


def checkpoint_dir(run_dir):
    return os.path.join(run_dir, "checkpoints")


def save(run_dir, state, step, keep):
    """Write `state` as checkpoints/step_<step>.pt, then point `latest` at it, then keep the newest `keep`."""
    directory = checkpoint_dir(run_dir)
    os.makedirs(directory, exist_ok=True)
    name = f"step_{step:012d}.pt"
    path = os.path.join(directory, name)
    _write_atomically(path, lambda f: torch.save(state, f))
    # Only a complete file is ever named by `latest`.
    _write_atomically(os.path.join(directory, LATEST), lambda f: f.write(name.encode() + b"\n"))
    for old in sorted(n for n in os.listdir(directory) if n.startswith("step_") and n.endswith(".pt"))[:-keep]:
        if old != name:
            os.remove(os.path.join(directory, old))
    return path


def save_best(run_dir, state):
    """Write `state` as checkpoints/best.pt (the best evaluation so far); `latest` never names it."""
    directory = checkpoint_dir(run_dir)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, BEST)
    _write_atomically(path, lambda f: torch.save(state, f))
    return path


def _write_atomically(path, write):
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def latest(run_dir):
    """Path of the newest complete checkpoint of a run. Raises CheckpointError when there is none."""
    pointer = os.path.join(checkpoint_dir(run_dir), LATEST)
    try:
        with open(pointer) as f:
            name = f.read().strip()
    except OSError:
        raise CheckpointError(f"{run_dir}: no checkpoint found (missing {pointer})") from None
    if os.path.basename(name) != name or not name.endswith(".pt"):
        raise CheckpointError(f"{pointer}: does not name a checkpoint file")
    return os.path.join(checkpoint_dir(run_dir), name)


def resolve(run_dir, which="latest"):
    """Path of a run's checkpoint: `latest`, `best`, or a global step (an int or its digits)."""
    if which == "latest":
        return latest(run_dir)
    if which == "best":
        path = os.path.join(checkpoint_dir(run_dir), BEST)
        if not os.path.isfile(path):
            raise CheckpointError(f"{run_dir}: no best checkpoint (it is written when the run evaluates)")
        return path
    if isinstance(which, int) or str(which).isdigit():
        path = os.path.join(checkpoint_dir(run_dir), f"step_{int(which):012d}.pt")
        if not os.path.isfile(path):
            kept = sorted(n for n in os.listdir(checkpoint_dir(run_dir)) if n.startswith("step_")) \
                if os.path.isdir(checkpoint_dir(run_dir)) else []
            steps = ", ".join(str(int(n[5:-3])) for n in kept if n.endswith(".pt")) or "none"
            raise CheckpointError(f"checkpoint={which}: no such checkpoint in {run_dir} (kept steps: {steps})")
        return path
    raise CheckpointError(f"checkpoint={which}: must be latest, best or a global step")


def load(path):
    """Read and check a checkpoint without executing any code from it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, unsafe globals, missing file ...
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: not a valid rl checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(key), kind) for key, kind in REQUIRED_KEYS.items()):
        raise CheckpointError(f"{path}: not an rl checkpoint (missing or mistyped entries)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']}, expected {FORMAT_VERSION}")
    return state


def rng_state(generator):
    """Every random stream a run draws from, as tensors and plain values."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                           "pos": int(numpy_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
        "learner": generator.get_state(),
    }


def restore_rng_state(state, generator):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
                            "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    generator.set_state(state["learner"])
