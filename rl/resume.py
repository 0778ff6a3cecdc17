"""Continuing a run: what a resumed run may change, its config from the checkpoint, and putting a checkpoint back
into the live parts (weights, optimizers, random streams, envs, collector, the acting copy).

Hydra stays in train.py: `load_resume` takes the command line's overrides as a list.
"""

import random

import numpy as np
import torch
from omegaconf import OmegaConf

from rl import checkpoint, distributed
from rl.config import RESUMABLE, ConfigError
from rl.envs import get_snapshots, set_snapshots
from rl.trained import checkpoint_size_limit, spaces_state

# Keeps derived seeds apart: rank r seeds its own random streams seed + SEED_STRIDE * r, and a resume whose env
# state could not be saved restarts episodes from seed + first env + SEED_STRIDE * iteration.
SEED_STRIDE = 1_000_003


def resume_arguments(argv):
    """(the run folder of `resume=<dir>` or None, arguments to add): a resumed run writes into its own folder,
    and Hydra adds nothing there."""
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    resume = resume[-1] if resume and resume[-1] not in ("", "null") else None
    return resume, ([f"hydra.run.dir={resume}", "hydra.output_subdir=null"] if resume else [])


def load_resume(cfg, overrides):
    """For `resume=<run dir>`: the saved config with the allowed overrides applied, and the checkpoint.

    `overrides` is the command line's list of `key=value`. The original command line may be repeated: an
    override that names the value the run already has is fine; one that would change the run is refused,
    naming it.
    """
    run_dir = cfg.resume
    state = checkpoint.load(checkpoint.latest(run_dir), checkpoint_size_limit(run_dir))
    if state["run_config_digest"] != checkpoint.run_config_digest(run_dir):
        raise checkpoint.CheckpointError(f"{checkpoint.latest(run_dir)}: belongs to another run (its config is not "
                                         f"this folder's .hydra/config.yaml); refused")
    saved = checkpoint.config_of(state)
    # These describe this invocation, not the run.
    saved.resume, saved.stop_after_steps = cfg.resume, cfg.stop_after_steps
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in RESUMABLE and not override.startswith("~"):
            OmegaConf.update(saved, key, cfg[key], force_add=True)
            continue
        if override.startswith("~") or not _same_as_saved(key, value, cfg, saved):
            was = saved.algo.name if key == "algo" else saved.env.id if key == "env" else \
                OmegaConf.select(saved, key, default="<absent>")
            may_change = ", ".join(k for k in RESUMABLE if k != "resume")
            raise ConfigError(key, value, f"differs from the run's {key}={was}; a resumed run keeps its config "
                                          f"(only {may_change} may change)")
    return saved, state


def _same_as_saved(key, value, cfg, saved):
    if key == "algo":  # a config group: the saved run names the algorithm it used
        return value == saved.algo.name
    if key == "env":  # env=generic names its id separately, through env.id (compared on its own)
        return value in (saved.env.id, "generic")
    absent = object()
    return OmegaConf.select(saved, key, default=absent) == OmegaConf.select(cfg, key, default=absent) is not absent


def on_rank_zero(load, cfg, overrides):
    """Run `load(cfg, overrides)` -> (config, state) on rank 0 only (it reads the checkpoint) and hand every rank
    the result, or rank 0's refusal."""
    if distributed.world_size() == 1:
        return load(cfg, overrides)
    result, refusal = None, None
    if distributed.is_main():
        try:
            config, state = load(cfg, overrides)
            result = (OmegaConf.to_yaml(config), state)
        except (ConfigError, checkpoint.CheckpointError) as error:
            refusal = error
    result, message = distributed.broadcast_object((result, str(refusal) if refusal else None))
    if refusal is not None:
        raise refusal
    if message is not None:
        raise ConfigError("resume", cfg.resume, f"refused on rank 0: {message}")
    return OmegaConf.create(result[0]), result[1]


def snapshot(cfg, parts, progress, wall_seconds):
    """The checkpoint of a run's live `parts` and `progress` (see train.Parts, train.Progress); every rank takes
    part (each adds its envs, collector and random streams)."""
    ranks = distributed.gather_objects({
        "rng": rng_state(parts.generator),
        "collector": parts.collector.state_dict(),
        "env_snapshots": get_snapshots(parts.envs),
    })
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "config": OmegaConf.to_yaml(cfg),
        "spaces": spaces_state(parts.envs.single_observation_space, parts.envs.single_action_space),
        "agent": parts.agent.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in parts.optimizers.items()},
        "iteration": progress.iteration,
        "global_step": progress.global_step,
        "wall_seconds": wall_seconds,
        "world_size": distributed.world_size(),
        "ranks": ranks,
        "best_eval": dict(progress.best),
        "recent_returns": torch.tensor(list(progress.recent_returns), dtype=torch.float64),
        "run_config_digest": progress.config_digest,
    }


def rng_state(generator):
    """Every random stream a run draws from, as tensors and plain values."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                            "pos": int(numpy_state["state"]["pos"])},
                  "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])},
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


def restore(state, parts, cfg, batch_size):
    """Put a loaded checkpoint back into a run's live `parts` (see train.Parts), for this rank; CheckpointError
    if it does not fit."""
    if state["world_size"] != distributed.world_size():
        raise checkpoint.CheckpointError(
            f"{cfg.resume}: the run was made by {state['world_size']} process(es) and resumes only with as many "
            f"(this is {distributed.world_size()}); e.g. torchrun --nproc_per_node={state['world_size']} -m rl.train "
            f"resume=...")
    if state["global_step"] != state["iteration"] * batch_size:
        raise checkpoint.CheckpointError(f"{cfg.resume}: checkpoint says step {state['global_step']} after "
                                         f"{state['iteration']} iterations of {batch_size}; refused")
    try:
        _restore_unchecked(state, parts, cfg)
    except Exception as error:  # a checkpoint whose contents do not fit this run
        reason = " ".join(str(error).split())[:200]
        raise checkpoint.CheckpointError(f"{cfg.resume}: checkpoint does not fit this run "
                                         f"({type(error).__name__}: {reason})") from None


def _restore_unchecked(state, parts, cfg):
    parts.agent.load_state_dict(state["agent"])
    if parts.acting_agent is not parts.agent:
        parts.acting_agent.load_state_dict(state["agent"])
    for name, optimizer in parts.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    own = state["ranks"][distributed.rank()]
    restore_rng_state(own["rng"], parts.generator)
    if own["env_snapshots"] is not None:
        set_snapshots(parts.envs, own["env_snapshots"])
        parts.collector.load_state_dict(own["collector"])
    else:  # envs whose state cannot be captured start new episodes; everything else continues exactly
        first_env = distributed.rank() * cfg.env.num_envs
        parts.collector.restart_episodes(seed=cfg.seed + first_env + SEED_STRIDE * state["iteration"])
