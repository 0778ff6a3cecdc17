"""Validation of a composed config: every bad value becomes one line naming the key and the value."""

import difflib
import math
from pathlib import Path

import gymnasium as gym
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from rl.algos import ALGORITHMS
from rl.envs import BACKENDS, check_env_id, make_vector_env

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
FREE_FORM = ("env.kwargs",)  # passed through to gymnasium.make as they are


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
    known = shipped_keys(cfg.algo.name)

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


def _check_memory(cfg, observation_space, action_space):
    """Refuse networks whose weights, gradients and Adam state cannot fit in this machine's memory."""
    obs_dim = int(math.prod(observation_space.shape))
    out_dim = int(action_space.n) if isinstance(action_space, gym.spaces.Discrete) else int(math.prod(action_space.shape))
    for key, out in (("algo.actor_hidden_sizes", out_dim), ("algo.critic_hidden_sizes", 1)):
        widths = [obs_dim, *_get(cfg, key), out]
        params = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
        needed = 4 * 4 * params  # float32 weights, gradients and two Adam moments
        available = _available_memory()
        if available is not None and needed > available:
            raise ConfigError(key, list(_get(cfg, key)), f"{params:,} weights need about {needed / 2**30:.1f} GiB "
                              f"(weights, gradients, Adam state); this machine has {available / 2**30:.1f} GiB free")


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


def validate(cfg):
    """Raise ConfigError for the first bad value; return the resolved device string."""
    _require(cfg, "algo.name", lambda v: v in ALGORITHMS, f"unknown algorithm; choose one of {', '.join(ALGORITHMS)}")
    _check_known_keys(cfg)
    _check_finite_numbers(cfg)
    _require(cfg, "env.id", lambda v: isinstance(v, str), "must be a gymnasium environment id")
    _require(cfg, "env.backend", lambda v: v in BACKENDS, f"must be one of {', '.join(BACKENDS)}")
    _require(cfg, "env.num_threads", _non_negative_int, "must be an integer >= 0")
    try:
        check_env_id(cfg.env.id, cfg.env.backend)
    except ValueError as error:
        key = "env.backend" if "pip install" in str(error) else "env.id"
        raise ConfigError(key, _get(cfg, key), f"unknown {cfg.env.backend} environment ({error})"
                          if key == "env.id" else str(error)) from None
    _require(cfg, "seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 - 20_000,
             "must be an integer in [0, 2^32 - 20000)")
    _require(cfg, "total_timesteps", _positive_int, "must be a positive integer")
    _require(cfg, "env.num_envs", _positive_int, "must be a positive integer")
    _require(cfg, "env.vectorization", lambda v: v in ("sync", "async"), "must be sync or async")
    _require(cfg, "env.start_method", lambda v: v in (None, "fork", "spawn", "forkserver"),
             "must be fork, spawn, forkserver or null")
    for key in ("env.normalize_observations", "env.normalize_rewards", "deterministic", "distributed_check"):
        _require(cfg, key, _boolean, "must be true or false")
    for key in ("env.clip_observations", "env.clip_rewards"):
        _require(cfg, key, _positive, "must be > 0")
    _require(cfg, "env.kwargs", lambda v: isinstance(v, DictConfig), "must be a mapping of gymnasium.make arguments")
    spaces = _check_spaces(cfg)
    _require(cfg, "eval_episodes", _non_negative_int, "must be an integer >= 0")
    _require(cfg, "eval_every", _non_negative_int, "must be an integer >= 0")
    _require(cfg, "log_every", _positive_int, "must be a positive integer")
    _require(cfg, "checkpoint_every", _non_negative_int, "must be an integer >= 0")
    _require(cfg, "checkpoint_keep", _positive_int, "must be a positive integer")
    _require(cfg, "torch_threads", lambda v: v is None or _positive_int(v), "must be a positive integer or null")
    _require(cfg, "stop_after_steps", lambda v: v is None or _positive_int(v), "must be a positive integer or null")
    _require(cfg, "progress", lambda v: v in ("auto", True, False), "must be auto, true or false")
    _require(cfg, "nan_policy", lambda v: v in ("stop", "skip_update"), "must be stop or skip_update")

    algo = cfg.algo
    _require(cfg, "algo.num_steps", _positive_int, "must be a positive integer")
    _require(cfg, "algo.learning_rate", _positive, "must be > 0")
    _require(cfg, "algo.gamma", lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]")
    _require(cfg, "algo.gae_lambda", _in_unit_interval, "must be in [0, 1]")
    _require(cfg, "algo.init_log_std", _number, "must be a number")
    _require(cfg, "algo.normalize_advantages", _boolean, "must be true or false")
    _require(cfg, "algo.anneal_learning_rate", _boolean, "must be true or false")
    _require(cfg, "algo.orthogonal_init", _boolean, "must be true or false")
    if cfg.algo.name == "ppo":
        _require(cfg, "algo.compile", _boolean, "must be true or false")
    _require(cfg, "algo.activation", lambda v: v in ("tanh", "relu", "elu"), "must be tanh, relu or elu")
    for key in ("algo.actor_hidden_sizes", "algo.critic_hidden_sizes"):
        _require(cfg, key, lambda v: all(_positive_int(w) for w in v), "must be a list of positive integers")
    _check_memory(cfg, *spaces)
    batch_size = cfg.env.num_envs * algo.num_steps
    if cfg.total_timesteps < batch_size:
        raise ConfigError("total_timesteps", cfg.total_timesteps,
                          f"must be at least one rollout (env.num_envs * algo.num_steps = {batch_size})")
    if algo.name == "ppo":
        _require(cfg, "algo.clip_coef", _positive, "must be > 0")
        _require(cfg, "algo.update_epochs", _positive_int, "must be a positive integer")
        _require(cfg, "algo.num_minibatches",
                 lambda v: _positive_int(v) and algo.num_steps // v >= 1 and algo.num_steps // v * cfg.env.num_envs >= 2,
                 f"must be a positive integer no larger than algo.num_steps ({algo.num_steps}) that leaves at "
                 f"least 2 samples per minibatch (each minibatch takes num_steps // num_minibatches steps of "
                 f"each of the {cfg.env.num_envs} envs)")
        _require(cfg, "algo.clip_value_loss", _boolean, "must be true or false")
        _require(cfg, "algo.anneal_clip_coef", _boolean, "must be true or false")
        _require(cfg, "algo.max_grad_norm", _positive, "must be > 0")
        _require(cfg, "algo.entropy_coef", _number, "must be a number")
        _require(cfg, "algo.value_coef", _positive, "must be > 0")
        _require(cfg, "algo.target_kl", lambda v: v is None or _positive(v), "must be > 0 or null")
    else:
        _validate_natural_gradient(cfg, batch_size)
    return resolve_device(cfg.device)


def _validate_natural_gradient(cfg, batch_size):
    _require(cfg, "algo.max_kl" if cfg.algo.name == "trpo" else "algo.step_size", _positive, "must be > 0")
    _require(cfg, "algo.cg_iters", _positive_int, "must be a positive integer")
    _require(cfg, "algo.cg_damping", _positive, "must be > 0 (the Fisher matrix of a batch is often singular)")
    _require(cfg, "algo.cg_tol", lambda v: _number(v) and v >= 0, "must be >= 0")
    _require(cfg, "algo.fvp", lambda v: v in ("analytic", "hessian"), "must be analytic or hessian")
    _require(cfg, "algo.fvp_subsample", lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]")
    _require(cfg, "algo.vf_iters", _positive_int, "must be a positive integer")
    _require(cfg, "algo.vf_minibatches", lambda v: _positive_int(v) and v <= cfg.algo.num_steps,
             f"must be a positive integer no larger than algo.num_steps ({cfg.algo.num_steps}): each minibatch "
             "takes num_steps // vf_minibatches steps of every env")
    _require(cfg, "algo.max_grad_norm", lambda v: v is None or _positive(v), "must be > 0 or null")
    if cfg.algo.name == "trpo":
        _require(cfg, "algo.line_search_max_steps", _positive_int, "must be a positive integer")
        _require(cfg, "algo.line_search_shrink", lambda v: _number(v) and 0 < v < 1, "must be in (0, 1)")
        _require(cfg, "algo.line_search_accept_ratio", lambda v: _number(v) and v >= 0, "must be >= 0")
        _require(cfg, "algo.step_curvature", lambda v: v in ("undamped", "damped"), "must be undamped or damped")


def _check_spaces(cfg):
    """Build one env: bad `env.kwargs` and spaces we cannot learn on fail here, in one line."""
    if "render_mode" in cfg.env.kwargs:
        raise ConfigError("env.kwargs.render_mode", cfg.env.kwargs.render_mode, "training does not render; "
                          "record a trained policy with python -m rl.evaluate <run dir> video=true")
    try:
        env = make_vector_env(cfg.env.id, 1, backend=cfg.env.backend, **OmegaConf.to_container(cfg.env.kwargs))
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError("env.id", cfg.env.id, f"needs a package that is not installed: {error}") from None
    except Exception as error:  # anything the env's constructor raises
        reason = " ".join(str(error).split())[:300]
        raise ConfigError("env.kwargs", OmegaConf.to_container(cfg.env.kwargs),
                          f"{cfg.env.id} could not be created ({type(error).__name__}: {reason})") from None
    try:
        observation_space, action_space = env.single_observation_space, env.single_action_space
    finally:
        env.close()
    if not isinstance(observation_space, gym.spaces.Box):
        raise ConfigError("env.id", cfg.env.id, f"observation space {observation_space} is not a Box")
    if not (isinstance(action_space, gym.spaces.Discrete) or
            (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1)):
        raise ConfigError("env.id", cfg.env.id, f"action space {action_space} is neither Discrete nor a 1-D Box")
    return observation_space, action_space


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
