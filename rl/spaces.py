"""Observation and action spaces as plain values (numbers, strings, lists), so a checkpoint and a run folder's
spaces.json can carry them without pickled objects, and a trained policy is rebuilt without making its env."""

import gymnasium as gym
import numpy as np


class SpaceError(ValueError):
    """A space that cannot be written down or read back; the message is one line."""


def space_to_state(space):
    """A dict of plain values describing `space` (Box, Discrete, MultiDiscrete, MultiBinary, or a Dict of them)."""
    if isinstance(space, gym.spaces.Box):
        return {"kind": "Box", "dtype": np.dtype(space.dtype).name, "shape": list(space.shape),
                "low": _bounds(space.low), "high": _bounds(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"kind": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"kind": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(),
                "start": np.asarray(space.start).tolist(), "dtype": np.dtype(space.dtype).name}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"kind": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Dict):
        return {"kind": "Dict", "spaces": {key: space_to_state(sub) for key, sub in space.spaces.items()}}
    raise SpaceError(f"space {space} cannot be stored in a checkpoint")


def _bounds(values):
    """One number when every bound is the same (images, most MuJoCo spaces), else the flat list."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(flat[0]) if flat.size and (flat == flat[0]).all() else flat.tolist()


def space_from_state(state):
    """The space `space_to_state` described; SpaceError for anything else."""
    try:
        kind = state["kind"]
        if kind == "Box":
            shape, dtype = tuple(int(d) for d in state["shape"]), np.dtype(state["dtype"])
            low, high = (np.broadcast_to(np.asarray(state[k], dtype=np.float64).reshape(
                -1 if isinstance(state[k], list) else ()), (int(np.prod(shape)),)).reshape(shape)
                for k in ("low", "high"))
            return gym.spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)
        if kind == "Discrete":
            return gym.spaces.Discrete(int(state["n"]), start=int(state["start"]))
        if kind == "MultiDiscrete":
            return gym.spaces.MultiDiscrete(np.asarray(state["nvec"], dtype=np.int64), dtype=np.dtype(state["dtype"]),
                                            start=np.asarray(state["start"], dtype=np.int64))
        if kind == "MultiBinary":
            n = state["n"]
            return gym.spaces.MultiBinary(int(n) if not isinstance(n, list) else [int(d) for d in n])
        if kind == "Dict":
            return gym.spaces.Dict({key: space_from_state(sub) for key, sub in state["spaces"].items()})
    except Exception as error:  # a mistyped or incomplete description
        raise SpaceError(f"not a space description ({type(error).__name__}: {error})") from None
    raise SpaceError(f"unknown space kind {kind!r}")
