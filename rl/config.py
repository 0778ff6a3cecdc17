"""The config's one schema: every key a run reads, what it must be, which algorithms read it and whether a
resumed run may change it. Values live in the YAML files alone; validation, the HParams columns and resume's
list of what may change read this table. Every bad value becomes one line naming the key and the value."""

import difflib
import math
from pathlib import Path
from typing import Callable, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from rl.envs import BACKENDS, PREPROCESSING, check_env_id, load_wrapper, make_vector_env
from rl.memory import MEMORY_KINDS
from rl.networks import cnn_output_side
from rl.observations import MASK_SOURCES, ObservationError, ObservationLayout
from rl.policy import mask_blocks

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
FREE_FORM = ("env.kwargs",)  # passed through to gymnasium.make as they are
ALGORITHM_NAMES = ("ppo", "trpo", "npg")
NATURAL_GRADIENT = ("trpo", "npg")


def shipped_keys(algo_name):
    """{dotted key: default} of every key a run of `algo_name` reads, from the shipped config files."""
    run = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"))
    keys = {k: v for k, v in run.items() if k not in ("defaults", "hydra")}
    algo = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "algo" / f"{algo_name}.yaml"))
    env = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "env" / "common.yaml"))
    keys.update({f"algo.{k}": v for k, v in algo.items()})
    keys.update({f"env.{k}": v for k, v in env.items()})
    return keys


def _check_known_keys(cfg):
    """Refuse keys no code reads (`+algo.lr=...` would otherwise be accepted and ignored)."""
    known = keys_of(cfg.algo.name)

    def walk(node, prefix):
        for key in node.keys():
            path = f"{prefix}{key}"
            if path in FREE_FORM:
                continue
            if path in ("algo", "env"):
                walk(node[key], f"{path}.")
                continue
            if path not in known:
                close = difflib.get_close_matches(path, known, n=1, cutoff=0.8)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(path, _get(cfg, path), f"unknown key, nothing reads it{hint}")

    walk(cfg, "")


class ConfigError(ValueError):
    def __init__(self, key, value, reason):
        super().__init__(f"{key}={value!r}: {reason}")


def _get(cfg, key):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _require(cfg, key, test, reason):
    if _is_missing(cfg, key):
        raise ConfigError(key, "???", "required; set it on the command line")
    value = _get(cfg, key)
    ok = False
    try:
        ok = bool(test(value))
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(key, value, reason)


def _is_missing(cfg, key):
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return node is not None and OmegaConf.is_missing(node, leaf)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive(value):
    return _number(value) and value > 0


def _boolean(value):
    return isinstance(value, bool)


def _in_unit_interval(value):
    return _number(value) and 0 <= value <= 1


def _check_finite_numbers(node, prefix=""):
    """NaN and infinity pass every `> 0` test; no key of ours means them."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if OmegaConf.is_missing(node, key):
            continue  # a required `???` value: named by the checks that follow
        value = node[key]
        path = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{key}]"
        if isinstance(value, (DictConfig, ListConfig)):
            _check_finite_numbers(value, f"{path}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(path, value, "must be a finite number")


def _check_memory(cfg, layout, action_space):
    """Refuse networks whose weights, gradients and Adam state cannot fit in this machine's memory (counted
    here: building them first could exhaust it)."""
    out_dim = (int(action_space.n) if isinstance(action_space, gym.spaces.Discrete) else
               int(sum(action_space.nvec)) if isinstance(action_space, gym.spaces.MultiDiscrete) else
               int(math.prod(action_space.shape)))  # Box, MultiBinary
    images = layout.of_kind("image")
    encoder_weights, in_dim = 0, layout.dim
    if images or layout.mask is not None:
        env = cfg.env
        features = env.cnn_features
        in_dim = len(images) * features + sum(p.size for p in layout.pieces if p.kind in ("vector", "onehot"))
        for piece in images:
            channels = [piece.image_shape[0], *env.cnn_channels]
            encoder_weights += sum((a * k * k + 1) * b for a, b, k in zip(channels[:-1], channels[1:],
                                                                           env.cnn_kernels))
            sides = [cnn_output_side(side, env.cnn_kernels, env.cnn_strides) for side in piece.image_shape[1:]]
            encoder_weights += (channels[-1] * sides[0] * sides[1] + 1) * features
    if cfg.algo.memory != "none":  # the core between encoder and head: 3 (GRU) or 4 (LSTM) gates
        size = cfg.algo.memory_size
        encoder_weights += (3 if cfg.algo.memory == "gru" else 4) * size * (in_dim + size + 2)
        in_dim = size
    for key, out in (("algo.actor_hidden_sizes", out_dim), ("algo.critic_hidden_sizes", 1)):
        widths = [in_dim, *_get(cfg, key), out]
        params = encoder_weights + sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
        needed = 4 * 4 * params  # float32 weights, gradients and two Adam moments
        available = _available_memory()
        if available is not None and needed > available:
            raise ConfigError(key, list(_get(cfg, key)), f"{params:,} weights need about {needed / 2**30:.1f} GiB "
                              f"(weights, gradients, Adam state); this machine has {available / 2**30:.1f} GiB free")


def _check_layout(cfg, observation_space, action_space, first_obs, first_info):
    """The observation's layout (rl.observations), refused in one line when policies cannot read it: a space
    kind, a wrong mask, an image the CNN cannot take. The first reset's observation is packed as a check."""
    env = cfg.env
    image_keys = None if env.image_keys == "auto" else list(env.image_keys)
    try:
        layout = ObservationLayout(observation_space, image_keys, env.action_mask, mask_blocks(action_space))
        layout.pack(first_obs, first_info)
    except ObservationError as error:
        key = next((k for k in ("env.image_keys", "env.action_mask") if k in str(error)), "env.id")
        raise ConfigError(key, _get(cfg, key), str(error)) from None
    if cfg.algo.get("share_encoder", False):
        if not layout.of_kind("image"):
            raise ConfigError("algo.share_encoder", True, "the observation has no image: there is no CNN to share")
        if cfg.algo.memory != "none":
            raise ConfigError("algo.share_encoder", True, "not with algo.memory yet: each core has its own encoder")
    if not (len(env.cnn_channels) == len(env.cnn_kernels) == len(env.cnn_strides)):
        raise ConfigError("env.cnn_kernels", list(env.cnn_kernels), "env.cnn_channels, env.cnn_kernels and "
                          "env.cnn_strides must have one entry per conv layer each")
    for piece in layout.of_kind("image"):
        sides = [cnn_output_side(side, env.cnn_kernels, env.cnn_strides) for side in piece.image_shape[1:]]
        if min(sides) < 1:
            raise ConfigError("env.cnn_kernels", list(env.cnn_kernels),
                              f"the {piece.image_shape[1]}x{piece.image_shape[2]} image of observation key "
                              f"{piece.key!r} is too small for these kernels and strides {list(env.cnn_strides)}; "
                              "choose smaller ones (env.cnn_*; e.g. [3] and [1] for a 10x10 image)")
    return layout


def _available_memory():
    """Bytes of memory available to a new allocation (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Key(NamedTuple):
    check: Callable  # value -> bool
    reason: str  # what the refusal says
    algos: tuple = ALGORITHM_NAMES  # the algorithms whose runs read it
    resumable: bool = False  # a resumed run may change it (device and torch_threads then void the bits)


def _seed(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32 - 20_000


def _optional(check):
    return lambda v: v is None or check(v)


def _one_of(*choices):
    return lambda v: v in choices


BOOLEAN = (_boolean, "must be true or false")
POSITIVE_INT = (_positive_int, "must be a positive integer")
NON_NEGATIVE_INT = (_non_negative_int, "must be an integer >= 0")
POSITIVE = (_positive, "must be > 0")
WIDTHS = (lambda v: all(_positive_int(w) for w in v), "must be a list of positive integers")
PPO, TRPO, NPG = ("ppo",), ("trpo",), ("npg",)

# (key, Key): a key may appear twice, for disjoint sets of algorithms. Checked in this order.
SCHEMA = (
    ("algo.name", Key(_one_of(*ALGORITHM_NAMES), f"unknown algorithm; choose one of {', '.join(ALGORITHM_NAMES)}")),
    ("env.id", Key(lambda v: isinstance(v, str), "must be a gymnasium environment id")),
    ("env.backend", Key(_one_of(*BACKENDS), f"must be one of {', '.join(BACKENDS)}")),
    ("env.num_threads", Key(*NON_NEGATIVE_INT)),
    ("seed", Key(_seed, "must be an integer in [0, 2^32 - 20000)")),
    ("total_timesteps", Key(*POSITIVE_INT, resumable=True)),
    ("env.num_envs", Key(*POSITIVE_INT)),
    ("env.vectorization", Key(_one_of("sync", "async"), "must be sync or async")),
    ("env.start_method", Key(_one_of(None, "fork", "spawn", "forkserver"), "must be fork, spawn, forkserver or null")),
    ("env.normalize_observations", Key(*BOOLEAN)),
    ("env.normalize_rewards", Key(*BOOLEAN)),
    ("deterministic", Key(*BOOLEAN)),
    ("distributed_check", Key(*BOOLEAN, resumable=True)),
    ("env.clip_observations", Key(*POSITIVE)),
    ("env.clip_rewards", Key(*POSITIVE)),
    ("env.kwargs", Key(lambda v: isinstance(v, DictConfig), "must be a mapping of gymnasium.make arguments")),
    ("env.preprocessing", Key(_one_of(*PREPROCESSING), f"must be one of {', '.join(PREPROCESSING)}")),
    ("env.wrappers", Key(lambda v: isinstance(v, ListConfig) and all(isinstance(k, str) for k in v),
                         'must be a list of wrapper import paths ("package.module:Wrapper")')),
    ("env.image_keys", Key(lambda v: v == "auto" or (isinstance(v, ListConfig) and all(isinstance(k, str) for k in v)),
                           "must be auto or a list of observation keys")),
    ("env.action_mask", Key(_one_of(*MASK_SOURCES), f"must be one of {', '.join(MASK_SOURCES)}")),
    ("env.cnn_channels", Key(*WIDTHS)),
    ("env.cnn_kernels", Key(*WIDTHS)),
    ("env.cnn_strides", Key(*WIDTHS)),
    ("env.cnn_features", Key(*POSITIVE_INT)),
    ("eval_episodes", Key(*NON_NEGATIVE_INT, resumable=True)),
    ("eval_every", Key(*NON_NEGATIVE_INT, resumable=True)),
    ("log_every", Key(*POSITIVE_INT, resumable=True)),
    ("checkpoint_every", Key(*NON_NEGATIVE_INT, resumable=True)),
    ("checkpoint_keep", Key(*POSITIVE_INT, resumable=True)),
    ("torch_threads", Key(_optional(_positive_int), "must be a positive integer or null", resumable=True)),
    ("stop_after_steps", Key(_optional(_positive_int), "must be a positive integer or null", resumable=True)),
    ("progress", Key(_one_of("auto", True, False), "must be auto, true or false", resumable=True)),
    ("nan_policy", Key(_one_of("stop", "skip_update"), "must be stop or skip_update", resumable=True)),
    ("device", Key(lambda v: isinstance(v, str), "must be cpu, cuda or auto", resumable=True)),
    ("resume", Key(_optional(lambda v: isinstance(v, str)), "must be a run directory or null", resumable=True)),
    ("algo.num_steps", Key(*POSITIVE_INT)),
    ("algo.learning_rate", Key(*POSITIVE)),
    ("algo.gamma", Key(lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]")),
    ("algo.gae_lambda", Key(_in_unit_interval, "must be in [0, 1]")),
    ("algo.init_log_std", Key(_number, "must be a number")),
    ("algo.normalize_advantages", Key(*BOOLEAN)),
    ("algo.anneal_learning_rate", Key(*BOOLEAN)),
    ("algo.orthogonal_init", Key(*BOOLEAN)),
    ("algo.compile", Key(*BOOLEAN, algos=PPO)),
    ("algo.activation", Key(_one_of("tanh", "relu", "elu"), "must be tanh, relu or elu")),
    ("algo.actor_hidden_sizes", Key(*WIDTHS)),
    ("algo.critic_hidden_sizes", Key(*WIDTHS)),
    ("algo.share_encoder", Key(*BOOLEAN, algos=PPO)),  # and an image to share, no memory: see _check_layout
    ("algo.memory", Key(_one_of(*MEMORY_KINDS), f"must be one of {', '.join(MEMORY_KINDS)}")),
    ("algo.memory_size", Key(*POSITIVE_INT)),
    ("algo.sequence_length", Key(*POSITIVE_INT)),  # and dividing num_steps: see _check_batch
    ("algo.clip_coef", Key(*POSITIVE, algos=PPO)),
    ("algo.update_epochs", Key(*POSITIVE_INT, algos=PPO)),
    ("algo.num_minibatches", Key(*POSITIVE_INT, algos=PPO)),  # and small enough: see _check_batch
    ("algo.clip_value_loss", Key(*BOOLEAN, algos=PPO)),
    ("algo.anneal_clip_coef", Key(*BOOLEAN, algos=PPO)),
    ("algo.max_grad_norm", Key(*POSITIVE, algos=PPO)),
    ("algo.entropy_coef", Key(_number, "must be a number", algos=PPO)),
    ("algo.value_coef", Key(*POSITIVE, algos=PPO)),
    ("algo.target_kl", Key(_optional(_positive), "must be > 0 or null", algos=PPO)),
    ("algo.max_kl", Key(*POSITIVE, algos=TRPO)),
    ("algo.step_size", Key(*POSITIVE, algos=NPG)),
    ("algo.cg_iters", Key(*POSITIVE_INT, algos=NATURAL_GRADIENT)),
    ("algo.cg_damping", Key(_positive, "must be > 0 (the Fisher matrix of a batch is often singular)",
                            algos=NATURAL_GRADIENT)),
    ("algo.cg_tol", Key(lambda v: _number(v) and v >= 0, "must be >= 0", algos=NATURAL_GRADIENT)),
    ("algo.fvp", Key(_one_of("analytic", "hessian"), "must be analytic or hessian", algos=NATURAL_GRADIENT)),
    ("algo.fvp_subsample", Key(lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]", algos=NATURAL_GRADIENT)),
    ("algo.vf_iters", Key(*POSITIVE_INT, algos=NATURAL_GRADIENT)),
    ("algo.vf_minibatches", Key(*POSITIVE_INT, algos=NATURAL_GRADIENT)),  # and small enough: see _check_batch
    ("algo.max_grad_norm", Key(_optional(_positive), "must be > 0 or null", algos=NATURAL_GRADIENT)),
    ("algo.line_search_max_steps", Key(*POSITIVE_INT, algos=TRPO)),
    ("algo.line_search_shrink", Key(lambda v: _number(v) and 0 < v < 1, "must be in (0, 1)", algos=TRPO)),
    ("algo.line_search_accept_ratio", Key(lambda v: _number(v) and v >= 0, "must be >= 0", algos=TRPO)),
    ("algo.step_curvature", Key(_one_of("undamped", "damped"), "must be undamped or damped", algos=TRPO)),
)
RESUMABLE = tuple(key for key, spec in SCHEMA if spec.resumable)  # what a resumed run may change


def keys_of(algo_name):
    """The dotted keys a run of `algo_name` reads, in schema order."""
    return [key for key, spec in SCHEMA if algo_name in spec.algos]


def validate(cfg):
    """Raise ConfigError for the first bad value; return the resolved device string."""
    name_key, name_spec = SCHEMA[0]
    _require(cfg, name_key, name_spec.check, name_spec.reason)
    _check_known_keys(cfg)
    _check_finite_numbers(cfg)
    algo = cfg.algo.name
    checked = [(key, spec) for key, spec in SCHEMA[1:] if algo in spec.algos]
    for key, spec in checked[:3]:  # the env's id and backend, then whether the backend has that env
        _require(cfg, key, spec.check, spec.reason)
    try:
        check_env_id(cfg.env.id, cfg.env.backend)
    except ValueError as error:
        key = "env.backend" if "pip install" in str(error) else "env.id"
        raise ConfigError(key, _get(cfg, key), f"unknown {cfg.env.backend} environment ({error})"
                          if key == "env.id" else str(error)) from None
    for key, spec in checked[3:]:
        _require(cfg, key, spec.check, spec.reason)
    observation_space, action_space, first_obs, first_info = _check_spaces(cfg)
    _check_memory(cfg, _check_layout(cfg, observation_space, action_space, first_obs, first_info), action_space)
    _check_batch(cfg)
    return resolve_device(cfg.device)


# Keys a run saved before they existed lacks, with the value that keeps that run's meaning (its observations
# were flat vectors read by an MLP without memory). A resume, rl.load and rl.evaluate read old runs with these.
KEYS_ADDED_LATER = {
    "env.preprocessing": "none", "env.wrappers": [], "env.image_keys": [], "env.action_mask": "none",
    "env.cnn_channels": [32, 64, 64], "env.cnn_kernels": [8, 4, 3], "env.cnn_strides": [4, 2, 1],
    "env.cnn_features": 512, "algo.memory": "none", "algo.memory_size": 64, "algo.sequence_length": 16,
    "algo.share_encoder": False,
}


def fill_keys_added_later(cfg):
    """`cfg` (a saved run config) with KEYS_ADDED_LATER's values where it has no such key (and its algorithm
    reads it)."""
    readers = dict(SCHEMA)
    for key, value in KEYS_ADDED_LATER.items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>" and cfg.algo.get("name") in readers[key].algos:
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _check_batch(cfg):
    """What the batch must hold: a whole rollout in the budget, and minibatches of at least one step per env."""
    algo, num_envs = cfg.algo, cfg.env.num_envs
    batch_size = num_envs * algo.num_steps
    if cfg.total_timesteps < batch_size:
        raise ConfigError("total_timesteps", cfg.total_timesteps,
                          f"must be at least one rollout (env.num_envs * algo.num_steps = {batch_size})")
    if algo.name == "ppo" and not (algo.num_steps // algo.num_minibatches >= 1 and
                                   algo.num_steps // algo.num_minibatches * num_envs >= 2):
        raise ConfigError("algo.num_minibatches", algo.num_minibatches,
                          f"must be a positive integer no larger than algo.num_steps ({algo.num_steps}) that leaves "
                          f"at least 2 samples per minibatch (each minibatch takes num_steps // num_minibatches "
                          f"steps of each of the {num_envs} envs)")
    if algo.memory != "none":
        length = algo.sequence_length
        minibatches = algo.num_minibatches if algo.name == "ppo" else algo.vf_minibatches
        key = "algo.num_minibatches" if algo.name == "ppo" else "algo.vf_minibatches"
        if algo.num_steps % length:
            raise ConfigError("algo.sequence_length", length, f"must divide algo.num_steps ({algo.num_steps}): a "
                              "recurrent policy trains on whole chunks of each env's rollout")
        if algo.num_steps // length < minibatches:
            raise ConfigError(key, minibatches, f"must be at most num_steps / sequence_length = "
                              f"{algo.num_steps // length}: each minibatch takes whole chunks of every env")
        if algo.name in NATURAL_GRADIENT and algo.fvp_subsample < 1.0:
            raise ConfigError("algo.fvp_subsample", algo.fvp_subsample, "must be 1.0 with algo.memory: a recurrent "
                              "policy's Fisher products run through whole sequences")
    if algo.name in NATURAL_GRADIENT and algo.vf_minibatches > algo.num_steps:
        raise ConfigError("algo.vf_minibatches", algo.vf_minibatches,
                          f"must be a positive integer no larger than algo.num_steps ({algo.num_steps}): each "
                          "minibatch takes num_steps // vf_minibatches steps of every env")


def hparam_columns():
    """Every HParams column any run can have, {name: a typed example}: the algo and env keys of every algorithm,
    and the run keys the table shows. Examples are the shipped values (a None one stands for a number)."""
    columns = {}
    for name in ALGORITHM_NAMES:
        for key, value in shipped_keys(name).items():
            if key.startswith(("algo.", "env.")) and columns.get(key) is None:  # a typed example beats None
                columns[key] = value
    columns.update({"seed": 0, "total_timesteps": 0, "device": "cpu"})
    return columns


def hparam_values(cfg, device):
    """This run's hyperparameters for TensorBoard's HParams table, flat (env.kwargs as one text)."""
    flat = {}
    for section in ("algo", "env"):
        for key, value in OmegaConf.to_container(cfg[section], resolve=True).items():
            flat[f"{section}.{key}"] = value
    flat.update({"seed": cfg.seed, "total_timesteps": cfg.total_timesteps, "device": device})
    return flat


def _check_spaces(cfg):
    """Build one env: bad `env.kwargs` and spaces we cannot learn on fail here, in one line."""
    if "render_mode" in cfg.env.kwargs:
        raise ConfigError("env.kwargs.render_mode", cfg.env.kwargs.render_mode, "training does not render; "
                          "record a trained policy with python -m rl.evaluate <run dir> video=true")
    try:
        wrappers = [load_wrapper(path) and path for path in cfg.env.wrappers]
    except ValueError as error:
        raise ConfigError("env.wrappers", list(cfg.env.wrappers), str(error)) from None
    try:
        env = make_vector_env(cfg.env.id, 1, backend=cfg.env.backend, preprocessing=cfg.env.preprocessing,
                              env_wrappers=wrappers, **OmegaConf.to_container(cfg.env.kwargs))
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError("env.id", cfg.env.id, f"needs a package that is not installed: {error}") from None
    except Exception as error:  # anything the env's constructor raises
        reason = " ".join(str(error).split())[:300]
        raise ConfigError("env.kwargs", OmegaConf.to_container(cfg.env.kwargs),
                          f"{cfg.env.id} could not be created ({type(error).__name__}: {reason})") from None
    try:
        observation_space, action_space = env.single_observation_space, env.single_action_space
        first_obs, first_info = env.reset(seed=0)
    except Exception as error:  # the env's reset, or a wrapper, failing
        reason = " ".join(str(error).split())[:300]
        raise ConfigError("env.id", cfg.env.id, f"the env's first reset failed ({type(error).__name__}: {reason})") \
            from None
    finally:
        env.close()
    supported = (isinstance(action_space, gym.spaces.Discrete) or
                 (isinstance(action_space, (gym.spaces.Box, gym.spaces.MultiBinary)) and len(action_space.shape) == 1)
                 or (isinstance(action_space, gym.spaces.MultiDiscrete) and len(action_space.shape) == 1
                     and not np.any(action_space.start)))
    if not supported:
        raise ConfigError("env.id", cfg.env.id, f"action space {action_space} is not Discrete, a 1-D Box, a 1-D "
                          "MultiBinary or a 1-D MultiDiscrete starting at 0")
    return observation_space, action_space, first_obs, first_info


def resolve_device(device):
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if isinstance(device, str) and device.startswith("cuda"):
        try:
            index = torch.device(device).index or 0
        except RuntimeError:
            raise ConfigError("device", device, "must be cpu, cuda, cuda:<index> or auto") from None
        if not torch.cuda.is_available():
            raise ConfigError("device", device, "no CUDA GPU is available here; use device=cpu or device=auto")
        if index >= torch.cuda.device_count():
            raise ConfigError("device", device, f"only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise ConfigError("device", device, "must be cpu, cuda or auto")


def resolve(cfg):
    """Resolve every interpolation now, so a bad one (`seed=${oc.env:UNSET}`) is one line before anything runs."""
    try:
        OmegaConf.resolve(cfg)
    except MissingMandatoryValue:
        return  # a required `???` key: validate() names it
    except OmegaConfBaseException as error:
        reason = " ".join(str(error).split("\n")[0].split())
        key, raw = _unresolvable(OmegaConf.to_container(cfg, resolve=False), cfg)
        raise ConfigError(key, raw, f"cannot be resolved ({reason})") from None


def _unresolvable(raw, cfg, prefix=""):
    """(dotted key, raw text) of the first value in `cfg` whose interpolation fails."""
    for key, value in raw.items():
        if isinstance(value, dict):
            found = _unresolvable(value, cfg, f"{prefix}{key}.")
            if found[0] != "config":
                return found
            continue
        try:
            OmegaConf.select(cfg, f"{prefix}{key}")
        except OmegaConfBaseException:
            return f"{prefix}{key}", value
    return "config", ""
