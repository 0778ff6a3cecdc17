"""Checkpoints: atomic writes, bounded loads that never run pickled code, and the `latest` pointer.

A checkpoint is a dict of tensors and plain Python values, read back with `torch.load(weights_only=True)`,
which refuses anything that would execute code while unpickling. Before that, what is read is bounded: the
`latest` pointer must be a short regular file, a checkpoint a regular file no larger than its model can
need, stored uncompressed (so its size bounds what it unpacks to). After it, every tensor must own no more
storage than it shows, and a SHA-256 of the whole payload, written into the checkpoint, must match: a
flipped byte anywhere is refused. Each checkpoint also carries the digest of its run folder's
.hydra/config.yaml, so a checkpoint copied in from another run is refused on resume.
"""

import hashlib
import io
import os
import stat
import zipfile

import numpy as np
import torch

from rl.files import write_atomically
from rl.guards import check_finite_tensors

FORMAT_VERSION = 5  # 5 added "spaces"; format 4 (without it) still loads
READABLE_VERSIONS = (4, 5)
REQUIRED_KEYS = {"format_version": int, "config": str, "agent": dict, "optimizers": dict, "iteration": int,
                 "global_step": int, "wall_seconds": float, "world_size": int, "ranks": list,
                 "best_eval": dict, "recent_returns": torch.Tensor, "run_config_digest": (str, type(None)),
                 "digest": str}
RANK_KEYS = {"rng": dict, "collector": dict, "env_snapshots": (list, type(None))}  # each entry of "ranks"
LATEST = "latest"
BEST = "best.pt"
POINTER_MAX_BYTES = 256
DEFAULT_MAX_BYTES = 1 << 30  # when no model is at hand to size a checkpoint against


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line."""


def checkpoint_dir(run_dir):
    return os.path.join(run_dir, "checkpoints")


def _directory(run_dir, create=False):
    """The run's checkpoints/ folder; a symlink there is refused (it could point anywhere)."""
    directory = checkpoint_dir(run_dir)
    if create:
        os.makedirs(directory, exist_ok=True)
    if os.path.islink(directory):
        raise CheckpointError(f"{directory}: is a symlink; checkpoints are read and written only in the run folder")
    return directory


def size_bound(num_parameters):
    """The most bytes a checkpoint of a model with `num_parameters` float32 numbers can need: the weights and
    Adam's two moments are 3 copies; 32 copies plus 64 MiB for RNG, env and collector state is room to spare."""
    return (64 << 20) + 32 * 4 * num_parameters


def run_config_digest(run_dir):
    """SHA-256 of the run folder's .hydra/config.yaml (the config the run started with), or None."""
    try:
        with open(os.path.join(run_dir, ".hydra", "config.yaml"), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def save(run_dir, state, step, keep):
    """Write `state` as checkpoints/step_<step>.pt, then point `latest` at it, then keep the newest `keep`."""
    check_finite_tensors("the weights about to be checkpointed", state["agent"].values())
    directory = _directory(run_dir, create=True)
    name = f"step_{step:012d}.pt"
    path = os.path.join(directory, name)
    write_atomically(path, _serialized(state))
    # Only a complete file is ever named by `latest`.
    write_atomically(os.path.join(directory, LATEST), lambda f: f.write(name.encode() + b"\n"))
    for old in sorted(n for n in os.listdir(directory) if n.startswith("step_") and n.endswith(".pt"))[:-keep]:
        if old != name:
            os.remove(os.path.join(directory, old))
    return path


def save_best(run_dir, state):
    """Write `state` as checkpoints/best.pt (the best evaluation so far); `latest` never names it."""
    check_finite_tensors("the weights about to be checkpointed", state["agent"].values())
    path = os.path.join(_directory(run_dir, create=True), BEST)
    write_atomically(path, _serialized(state))
    return path


def _serialized(state):
    """`state` sealed with its digest, serialized in memory; returns a writer for _write_atomically. (torch's
    own zip writer turns a failed write, a full disk, into an opaque RuntimeError; Python's write keeps the
    OSError that says what happened.)"""
    buffer = io.BytesIO()
    torch.save({**state, "digest": payload_digest(state)}, buffer)
    return lambda f: f.write(buffer.getbuffer())


def open_regular(path, max_bytes, what):
    """Open `path` for reading only if it is a regular file (no symlink, FIFO or device) of <= max_bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot open {what} ({error.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: {what} is not a regular file")
    if info.st_size > max_bytes:
        os.close(fd)
        raise CheckpointError(f"{path}: {what} is {info.st_size} bytes, more than the {max_bytes} it can be")
    return os.fdopen(fd, "rb")


def latest(run_dir):
    """Path of the newest complete checkpoint of a run. Raises CheckpointError when there is none."""
    pointer = os.path.join(_directory(run_dir), LATEST)
    if not os.path.lexists(pointer):
        raise CheckpointError(f"{run_dir}: no checkpoint found (missing {pointer})")
    with open_regular(pointer, POINTER_MAX_BYTES, "the latest pointer") as f:
        name = f.read().decode(errors="replace").strip()
    if os.path.basename(name) != name or not name.endswith(".pt"):
        raise CheckpointError(f"{pointer}: does not name a checkpoint file")
    return os.path.join(checkpoint_dir(run_dir), name)


def resolve(run_dir, which="latest"):
    """Path of a run's checkpoint: `latest`, `best`, or a global step (an int or its digits)."""
    if which == "latest":
        return latest(run_dir)
    directory = _directory(run_dir)
    if which == "best":
        path = os.path.join(directory, BEST)
        if not os.path.lexists(path):
            raise CheckpointError(f"{run_dir}: no best checkpoint (it is written when the run evaluates)")
        return path
    if isinstance(which, int) or str(which).isdigit():
        path = os.path.join(directory, f"step_{int(which):012d}.pt")
        if not os.path.lexists(path):
            kept = sorted(n for n in os.listdir(directory) if n.startswith("step_")) if os.path.isdir(directory) else []
            steps = ", ".join(str(int(n[5:-3])) for n in kept if n.endswith(".pt")) or "none"
            raise CheckpointError(f"checkpoint={which}: no such checkpoint in {run_dir} (kept steps: {steps})")
        return path
    raise CheckpointError(f"checkpoint={which}: must be latest, best or a global step")


def load(path, max_bytes=DEFAULT_MAX_BYTES):
    """Read and check a checkpoint without executing any code from it, reading at most `max_bytes`."""
    with open_regular(path, max_bytes, "checkpoint") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            with zipfile.ZipFile(f) as archive:
                entries = archive.infolist()
            if any(e.compress_type != zipfile.ZIP_STORED for e in entries) or sum(e.file_size for e in entries) > size:
                raise CheckpointError(f"{path}: not an rl checkpoint (compressed entries: it could unpack to "
                                      "far more than its size)")
            f.seek(0)
            state = torch.load(f, map_location="cpu", weights_only=True)
        except CheckpointError:
            raise
        except Exception as error:  # truncated zip, foreign pickle, unsafe globals ...
            reason = " ".join(str(error).split())[:200]
            raise CheckpointError(f"{path}: not a valid rl checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict) or not isinstance(state.get("format_version"), int):
        raise CheckpointError(f"{path}: not an rl checkpoint (missing or mistyped entries)")
    if state["format_version"] not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']}, expected one of "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    required = {**REQUIRED_KEYS, "spaces": dict} if state["format_version"] >= 5 else REQUIRED_KEYS
    if any(not isinstance(state.get(key), kind) for key, kind in required.items()) or \
            len(state["ranks"]) != state["world_size"] or any(
                not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in RANK_KEYS.items())
                for entry in state["ranks"]):
        raise CheckpointError(f"{path}: not an rl checkpoint (missing or mistyped entries)")
    for tensor in _tensors(state):
        if tensor.untyped_storage().nbytes() > max(tensor.numel(), 1) * tensor.element_size():
            raise CheckpointError(f"{path}: a tensor views more storage than it holds; refused")
    if payload_digest(state) != state["digest"]:
        raise CheckpointError(f"{path}: checksum mismatch: the file was changed or damaged after it was written")
    if state["global_step"] < 0 or state["iteration"] < 0 or not 0 <= state["wall_seconds"] < float("inf"):
        raise CheckpointError(f"{path}: impossible progress counters (iteration {state['iteration']}, "
                              f"global_step {state['global_step']})")
    _check_numbers(path, state)
    return state


def _check_numbers(path, state):
    """A sealed checkpoint can still hold numbers no run could have made (whoever can write the folder can
    seal again): every float must be finite, and running statistics' counts and variances >= 0."""
    for part in ("agent", "optimizers"):
        if any(torch.is_floating_point(t) and not bool(torch.isfinite(t).all()) for t in _tensors(state[part])):
            raise CheckpointError(f"{path}: non-finite values in the checkpoint's {part}; refused")
    for name, tensor in state["agent"].items():
        if str(name).endswith(("stats.count", "stats.var")) and torch.is_tensor(tensor) and \
                bool((tensor < 0).any()):
            raise CheckpointError(f"{path}: negative {name} in the checkpoint; refused")


def config_of(state):
    """The run config a loaded checkpoint carries, as an OmegaConf object."""
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = OmegaConf.create(state["config"])
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as error:  # no code runs: tags are refused
        raise CheckpointError(f"the checkpoint's embedded config is not valid YAML ({type(error).__name__})") from None
    if not isinstance(config, DictConfig) or "env" not in config or "algo" not in config:
        raise CheckpointError("the checkpoint's embedded config is not a run config")
    from rl.config import fill_keys_added_later

    return fill_keys_added_later(config)  # a run saved before a key existed reads it as it behaved then


def _tensors(node):
    if torch.is_tensor(node):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _tensors(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _tensors(value)


def payload_digest(state):
    """SHA-256 of everything in `state` but its "digest" entry: keys, types, shapes, dtypes and bytes."""
    digest = hashlib.sha256()

    def feed(node):
        if torch.is_tensor(node):
            tensor = node.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(node, dict):
            digest.update(f"D{len(node)}".encode())
            for key in sorted(node, key=repr):
                digest.update(repr(key).encode())
                feed(node[key])
        elif isinstance(node, (list, tuple)):
            digest.update(f"L{len(node)}".encode())
            for value in node:
                feed(value)
        else:
            if isinstance(node, np.generic):  # a NumPy scalar reads back as the Python one
                node = node.item()
            digest.update(f"V{type(node).__name__}:{node!r}".encode())

    feed({key: value for key, value in state.items() if key != "digest"})
    return digest.hexdigest()
