"""How an observation becomes the flat vector the policy reads: its layout, and packing batches into it.

Every space we learn on is laid out as pieces end to end in one vector per env step: a Box of features as
they are, an image as its raw pixels, a Discrete / MultiDiscrete value one-hot, a MultiBinary value as its
bits, a Dict as its keys' pieces in the space's key order, and an action mask (a Dict key or the env's
`info["action_mask"]`) as 0/1 entries the encoder skips and the actor applies. Packing once, where
observations leave the envs, keeps everything after it (rollout buffer, minibatches, resume, torchrun,
export) on one (B, D) tensor; `rl.networks.Encoder` reads the pieces back by offset.
"""

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

MASK_KEY = "action_mask"  # the Dict key and the info key of an action mask (PettingZoo's and MaskablePPO's)
OBS_KEY = "obs"  # the name `env.image_keys` gives a space that is not a Dict
MASK_SOURCES = ("auto", "observation", "info", "none")
MIN_IMAGE_SIDE = 2  # smaller than this is a vector, not an image


class ObservationError(ValueError):
    """An observation space (or mask) we cannot lay out; the message is one line and says what to do."""


@dataclass(frozen=True)
class Piece:
    key: str  # the Dict key, OBS_KEY for a space that is not a Dict
    kind: str  # "vector" | "image" | "onehot" | "mask"
    offset: int  # first feature in the packed vector
    size: int  # features it takes
    image_shape: tuple = ()  # image: (C, H, W) as the CNN reads it
    channels_last: bool = False  # image: stored as (H, W, C), the network permutes it
    scale: float = 1.0  # image: what the network multiplies pixels by (1/255 for uint8)
    sizes: tuple = ()  # onehot, mask: the number of values of each dimension
    starts: tuple = ()  # onehot: the first value of each dimension


class ObservationLayout:
    """The pieces of `observation_space`, as `env.image_keys` and `env.action_mask` declare them.

    image_keys: None detects images as SB3 does (a uint8 Box of 2 or 3 dimensions bounded by [0, 255], or a
    bool Box of 3, channels first when the first dimension is the smallest); a list names them (OBS_KEY for a
    space that is not a Dict). action_mask: "auto" takes a Dict key `action_mask` when there is one;
    "observation" requires it; "info" reads `info["action_mask"]`; "none" has no mask. `mask_blocks`: the logits
    a mask covers, as the number of values of each action dimension (a Discrete's (n,), a MultiDiscrete's
    nvec); None when the action space cannot be masked.
    """

    def __init__(self, observation_space, image_keys=None, action_mask="auto", mask_blocks=None):
        if action_mask not in MASK_SOURCES:
            raise ObservationError(f"env.action_mask={action_mask!r}: must be one of {', '.join(MASK_SOURCES)}")
        is_dict = isinstance(observation_space, gym.spaces.Dict)
        spaces = dict(observation_space.spaces) if is_dict else {OBS_KEY: observation_space}
        if image_keys is not None:
            unknown = sorted(set(image_keys) - set(spaces))
            if unknown:
                raise ObservationError(f"env.image_keys names {unknown}, not keys of the observation "
                                       f"(keys: {sorted(spaces)})")
        mask_from_obs = is_dict and MASK_KEY in spaces and action_mask in ("auto", "observation")
        if action_mask == "observation" and not mask_from_obs:
            raise ObservationError(f"env.action_mask=observation: the observation has no {MASK_KEY!r} key "
                                   "(use env.action_mask=info for a mask in the step's info)")
        self.pieces, self.mask_source, offset = [], None, 0
        for key, space in spaces.items():
            if mask_from_obs and key == MASK_KEY:
                piece = _mask_piece(space, offset, mask_blocks)
                self.mask_source = "observation"
            else:
                piece = _piece(key, space, offset, image_keys)
            self.pieces.append(piece)
            offset += piece.size
        if action_mask == "info":
            self.pieces.append(_mask_piece(None, offset, mask_blocks))
            self.mask_source = "info"
            offset += self.pieces[-1].size
        self.dim = offset
        self.is_dict = is_dict
        self.spaces = spaces
        # A single Box of features: packing is a reshape, and the policy is today's plain MLP.
        self.flat = len(self.pieces) == 1 and self.pieces[0].kind == "vector"

    def of_kind(self, kind):
        return [piece for piece in self.pieces if piece.kind == kind]

    @property
    def mask(self):
        """The mask piece, or None."""
        masks = self.of_kind("mask")
        return masks[0] if masks else None

    def normalized_features(self):
        """Indices of the features running normalization may touch (the vector pieces'), or None for all."""
        if self.flat:
            return None
        return np.concatenate([np.arange(p.offset, p.offset + p.size) for p in self.of_kind("vector")] +
                              [np.zeros(0, dtype=np.int64)]).astype(np.int64)

    def pack(self, obs, info=None):
        """A batch of observations as the env returns it (an array (B, ...) or a dict of them) -> (B, D).

        A flat layout keeps the env's dtype (so float64 MuJoCo observations are normalized as before); others
        are float32. A mask read from `info` is all ones where the info has none (a final observation).
        """
        if self.flat:
            return obs.reshape(obs.shape[0], -1)
        values = obs if self.is_dict else {OBS_KEY: obs}
        batch = len(next(iter(values.values()))) if values else _info_batch(info)
        out = np.empty((batch, self.dim), dtype=np.float32)
        for piece in self.pieces:
            target = out[:, piece.offset:piece.offset + piece.size]
            if piece.kind == "mask" and self.mask_source == "info":
                target[:] = _info_mask(info, batch, piece.size)
            elif piece.kind == "onehot":
                _one_hot(np.asarray(values[piece.key]).reshape(batch, -1), piece, target)
            else:
                target[:] = np.asarray(values[piece.key]).reshape(batch, piece.size)
        if self.mask is not None:
            _check_mask(out[:, self.mask.offset:self.mask.offset + self.mask.size], self.mask.sizes)
        return out

    def stack(self, observations):
        """A list of single observations (arrays or dicts) -> one batch in the env's form."""
        if self.is_dict:
            return {key: np.stack([np.asarray(o[key]) for o in observations]) for key in self.spaces}
        return np.stack([np.asarray(o) for o in observations])

    def is_single(self, obs):
        """Whether `obs` is one observation (not a batch) of this space."""
        space = self.spaces[OBS_KEY] if not self.is_dict else next(iter(self.spaces.values()))
        value = np.asarray(obs if not self.is_dict else obs[next(iter(self.spaces))])
        return value.shape == _value_shape(space)

    def describe(self):
        """The pieces as plain values (for an export's record)."""
        return [{"key": p.key, "kind": p.kind, "offset": p.offset, "size": p.size,
                 **({"image_shape": list(p.image_shape), "channels_last": p.channels_last, "scale": p.scale}
                    if p.kind == "image" else {}),
                 **({"sizes": list(p.sizes), "starts": list(p.starts)} if p.kind == "onehot" else {})}
                for p in self.pieces]


def _value_shape(space):
    if isinstance(space, gym.spaces.Discrete):
        return ()
    return tuple(space.shape)


def _piece(key, space, offset, image_keys):
    where = f"observation key {key!r}" if key != OBS_KEY else "the observation space"
    if isinstance(space, gym.spaces.Box):
        declared = image_keys is not None and key in image_keys
        if declared or (image_keys is None and _looks_like_image(space)):
            return _image_piece(key, space, offset, where)
        return Piece(key, "vector", offset, int(math.prod(space.shape)))
    if isinstance(space, gym.spaces.Discrete):
        return Piece(key, "onehot", offset, int(space.n), sizes=(int(space.n),), starts=(int(space.start),))
    if isinstance(space, gym.spaces.MultiDiscrete):
        sizes = tuple(int(n) for n in np.asarray(space.nvec).reshape(-1))
        starts = tuple(int(s) for s in np.asarray(space.start).reshape(-1))
        return Piece(key, "onehot", offset, sum(sizes), sizes=sizes, starts=starts)
    if isinstance(space, gym.spaces.MultiBinary):
        return Piece(key, "vector", offset, int(math.prod(space.shape)))
    if isinstance(space, gym.spaces.Text) or type(space).__name__ == "MissionSpace":  # MiniGrid's mission string
        hint = "a string: drop it with a gymnasium wrapper (for MiniGrid, ImgObsWrapper) or encode it as a Box"
    elif isinstance(space, gym.spaces.Dict):
        hint = "flatten the nested Dict into one level of keys"
    else:
        hint = "turn it into a Box, Discrete, MultiDiscrete or MultiBinary with a gymnasium wrapper"
    raise ObservationError(f"{where} is a {type(space).__name__} space, which policies cannot read; {hint}")


def _looks_like_image(space):
    shape = space.shape
    if space.dtype == np.bool_:
        return len(shape) == 3
    return (space.dtype == np.uint8 and len(shape) in (2, 3) and np.all(space.low == 0)
            and np.all(space.high == 255))


def _image_piece(key, space, offset, where):
    shape = tuple(int(d) for d in space.shape)
    if len(shape) == 2:
        shape, channels_last = (1, *shape), False
    elif len(shape) == 3:
        channels_last = shape[-1] < shape[0]  # (H, W, C) when the last dimension is the smallest
        if channels_last:
            shape = (shape[2], shape[0], shape[1])
    else:
        raise ObservationError(f"{where} {space} is declared an image but has {len(shape)} dimensions (2 or 3)")
    if min(shape[1:]) < MIN_IMAGE_SIDE:
        raise ObservationError(f"{where}: a {shape[1]}x{shape[2]} image is too small for a CNN; "
                               "leave it out of env.image_keys to read it as a vector")
    scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0
    return Piece(key, "image", offset, int(math.prod(shape)), image_shape=shape, channels_last=channels_last,
                 scale=scale)


def _mask_piece(space, offset, mask_blocks):
    if mask_blocks is None:
        raise ObservationError("action masks apply to Discrete and MultiDiscrete actions only (set "
                               "env.action_mask=none to read no mask)")
    num_logits = sum(mask_blocks)
    if space is not None:
        size = int(math.prod(space.shape)) if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)) else -1
        if size != num_logits:
            raise ObservationError(f"observation key {MASK_KEY!r} is {space}; a mask must be a MultiBinary or Box "
                                   f"of {num_logits} entries, one per action (per value of each dimension for "
                                   "MultiDiscrete)")
    return Piece(MASK_KEY, "mask", offset, num_logits, sizes=tuple(mask_blocks))


def _one_hot(values, piece, target):
    target[:] = 0.0
    rows = np.arange(values.shape[0])
    column = 0
    for d, (size, start) in enumerate(zip(piece.sizes, piece.starts)):
        target[rows, column + (values[:, d].astype(np.int64) - start)] = 1.0
        column += size


def _info_batch(info):
    return len(info[MASK_KEY])


def _info_mask(info, batch, size):
    """(B, size) from a vector env's info: its `action_mask` where the `_action_mask` flag is set, ones elsewhere."""
    if info is None or MASK_KEY not in info:
        return np.ones((batch, size), dtype=np.float32)
    mask = np.asarray(info[MASK_KEY])
    if mask.ndim == 1 and mask.dtype == object:  # some sub-envs gave none: gymnasium keeps an object array
        mask = np.stack([np.ones(size) if m is None else np.asarray(m, dtype=np.float32) for m in mask])
    if mask.shape != (batch, size):
        raise ObservationError(f"info[{MASK_KEY!r}] has shape {tuple(mask.shape[1:])}; expected ({size},), "
                               "one entry per action")
    present = np.asarray(info.get(f"_{MASK_KEY}", np.ones(batch, dtype=bool)), dtype=bool)
    return np.where(present[:, None], mask.astype(np.float32), 1.0)


def _check_mask(mask, blocks):
    if not np.isin(mask, (0.0, 1.0)).all():
        raise ObservationError("an action mask holds values other than 0 and 1")
    start = 0
    for d, size in enumerate(blocks):  # a categorical with every value masked has no distribution
        if not mask[:, start:start + size].any(axis=1).all():
            where = f" in action dimension {d}" if len(blocks) > 1 else ""
            raise ObservationError(f"an action mask allows no action{where}; every step needs one valid action")
        start += size
