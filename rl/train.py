"""Entry point: `python -m rl.train [algo=ppo|trpo|npg] [env=<id>] [key=value ...]`.

Only this module knows Hydra. It validates the config, builds the parts and runs the loop:
collect -> GAE -> update -> log -> evaluate -> checkpoint.

Exit codes: 0 done or stopped with a checkpoint; 2 bad input (nothing started, nothing left behind);
1 a fault during the run (an env, a NaN, a full disk), with the last checkpoint intact; 130 stopped at
once by a second Ctrl-C.
"""

import atexit
import copy
import os
import random
import shutil
import sys
import tempfile
import time
from collections import deque

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.nn.utils import parameters_to_vector

from rl import checkpoint, distributed, run_folder
from rl.algos import ALGORITHMS
from rl.config import CONFIG_DIR, ConfigError, resolve, validate
from rl.envs import (
    EnvError,
    close_vector_env,
    get_snapshots,
    make_vector_env,
    quiet_version_warnings,
)
from rl.evaluate import EVAL_SEED_OFFSET, evaluate
from rl.faults import RanksDiverged, RunFailed, StopRequest, describe_fault, first_line, kept, resume_command
from rl.guards import NonFiniteError
from rl.logger import Logger, describe_device, done_line, hparam_schema, hparams_of, start_banner, write_json
from rl.policy import build_agent, checkpoint_size_limit
from rl.rollout import Collector, flatten, gae

# What a resumed run may change; everything else comes from the checkpoint so the run stays the same run.
# `device` and `torch_threads` may change too (to resume elsewhere), but then the bits are not promised.
RESUME_OVERRIDABLE = ("total_timesteps", "stop_after_steps", "progress", "checkpoint_every", "checkpoint_keep",
                      "eval_episodes", "eval_every", "log_every", "device", "torch_threads", "distributed_check",
                      "nan_policy", "resume")


# Rank r seeds its own random streams (action sampling) seed + RANK_SEED_STRIDE * r.
RANK_SEED_STRIDE = 1_000_003


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg, run_dir, device, resume_state=None):
    """Train as `cfg` says, writing everything under `run_dir`. Returns the summary dict, or None when the
    run stopped early (signal or `stop_after_steps`) with a checkpoint to resume from, and on ranks other
    than 0 of a distributed run. A fault raises RunFailed; env workers never outlive the call."""
    start_time = time.perf_counter()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)  # the same on every rank: the networks start identical
    env_cfg = cfg.env
    env_kwargs = OmegaConf.to_container(env_cfg.kwargs)
    envs = make_vector_env(env_cfg.id, env_cfg.num_envs, env_cfg.vectorization, env_cfg.start_method,
                           backend=env_cfg.backend, num_threads=env_cfg.num_threads, **env_kwargs)
    progress = {"saved_step": resume_state["global_step"] if resume_state is not None else None, "step": 0}
    failed = True
    # The signal handlers stay through the clean-up: when a rank dies, torchrun SIGTERMs the others, and one
    # that met the failure first must still get to say what happened rather than die mid-clean-up.
    with StopRequest() as stop:
        try:
            summary = _train(cfg, run_dir, device, resume_state, envs, env_kwargs, start_time, progress, stop)
            failed = False
            return summary
        except (EnvError, NonFiniteError, RanksDiverged, OSError, EOFError, KeyboardInterrupt) as error:
            raise RunFailed(*describe_fault(error, envs, run_dir, progress)) from None
        except RuntimeError as error:
            if distributed.world_size() == 1:
                raise
            # A collective failed: another rank died or was killed (its own message names why).
            raise RunFailed(f"lost contact with the other ranks ({first_line(error)}); {kept(run_dir, progress)}") \
                from None
        finally:
            close_vector_env(envs, failed)


def _train(cfg, run_dir, device, resume_state, envs, env_kwargs, start_time, progress, stop):
    algo_cfg, env_cfg = cfg.algo, cfg.env
    algorithm = ALGORITHMS[algo_cfg.name]
    world, main = distributed.world_size(), distributed.is_main()
    agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space).to(device)
    # Acting stays on the CPU where the envs are: one small batch per step is cheaper there than a
    # host-device round trip. On a GPU learner we act with a CPU copy refreshed after every update.
    acting_agent = agent if torch.device(device).type == "cpu" else copy.deepcopy(agent).cpu()
    optimizers = algorithm.make_optimizers(agent, algo_cfg)
    if distributed.rank() > 0:  # each rank samples its own actions; rank 0 draws what one process would
        seed_everything(cfg.seed + RANK_SEED_STRIDE * distributed.rank())
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # shuffling: the same on every rank
    # Rank r's sub-env i is the run's env r * num_envs + i, seeded seed + r * num_envs + i.
    collector = Collector(envs, acting_agent, algo_cfg.num_steps, device, cfg.seed + distributed.rank() * env_cfg.num_envs)

    batch_size = world * env_cfg.num_envs * algo_cfg.num_steps  # global: every rank's envs
    num_iterations = cfg.total_timesteps // batch_size
    total_steps = num_iterations * batch_size
    iteration, global_step, elapsed_before = 0, 0, 0.0
    config_digest = checkpoint.run_config_digest(run_dir) if main else None
    if resume_state is not None:
        iteration, global_step = resume_state["iteration"], resume_state["global_step"]
        elapsed_before = resume_state["wall_seconds"]
        checkpoint.restore(resume_state, agent, acting_agent, optimizers, generator, collector, envs, cfg, batch_size)
        config_digest = resume_state["run_config_digest"]

    logger = Logger(run_dir, OmegaConf.to_yaml(cfg), hparams_of(cfg, device), hparam_schema(), total_steps,
                    cfg.progress, start_step=global_step, resumed=resume_state is not None, enabled=main)
    if main:
        print(start_banner(run_dir, algo_cfg.name, env_cfg.id, describe_device(device, cfg.device), env_cfg.num_envs,
                           algo_cfg.num_steps, num_iterations, cfg.total_timesteps, global_step, world), flush=True)
    stop_at = cfg.stop_after_steps if cfg.stop_after_steps is not None else total_steps
    best = dict(resume_state["best_eval"]) if resume_state is not None else {"return": None, "step": None}
    recent_returns = deque(resume_state["recent_returns"].tolist() if resume_state is not None else [], maxlen=100)
    evaluation = None  # (returns, lengths) of the latest evaluation point

    def state():
        """The checkpoint; every rank takes part (each adds its envs, collector and random streams)."""
        ranks = distributed.gather_objects({
            "rng": checkpoint.rng_state(generator),
            "collector": collector.state_dict(),
            "env_snapshots": get_snapshots(envs),
        })
        return {
            "format_version": checkpoint.FORMAT_VERSION,
            "config": OmegaConf.to_yaml(cfg),
            "agent": agent.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "iteration": iteration,
            "global_step": global_step,
            "wall_seconds": elapsed_before + time.perf_counter() - start_time,
            "world_size": world,
            "ranks": ranks,
            "best_eval": dict(best),
            "recent_returns": torch.tensor(list(recent_returns), dtype=torch.float64),
            "run_config_digest": config_digest,
        }

    def save():
        snapshot = state()
        if main:
            checkpoint.save(run_dir, snapshot, global_step, cfg.checkpoint_keep)
        progress["saved_step"] = global_step

    try:
        while iteration < num_iterations and global_step < stop_at and not distributed.any_rank(stop.requested):
            iteration += 1
            progress["step"] = global_step
            metrics = _iterate(iteration, num_iterations, algorithm, algo_cfg, agent, acting_agent, optimizers,
                               generator, collector, global_step, cfg.nan_policy)
            if cfg.distributed_check:
                _check_ranks_agree(agent, iteration)
            global_step += batch_size
            episodes = [e for rank_episodes in distributed.gather_objects(metrics.pop("episodes"))
                        for e in rank_episodes]
            recent_returns.extend(episode_return for episode_return, _ in episodes)
            logger.episodes(episodes, global_step)
            sps = global_step / (elapsed_before + time.perf_counter() - start_time)
            if iteration % cfg.log_every == 0 or iteration == num_iterations:
                logger.scalars({**metrics, "charts/sps": sps}, global_step)
            logger.progress(global_step, sps)
            if cfg.eval_episodes > 0 and (iteration == num_iterations or (
                    cfg.eval_every and iteration % cfg.eval_every == 0)):
                improved = False
                if main:  # rank 0 evaluates; the others wait at the next collective
                    evaluation = _evaluate(cfg, acting_agent, env_kwargs, logger, global_step,
                                           final=iteration == num_iterations)
                    improved = best["return"] is None or float(np.mean(evaluation[0])) > best["return"]
                    if improved:
                        best.update({"return": float(np.mean(evaluation[0])), "step": global_step})
                if distributed.broadcast_object(improved):
                    snapshot = state()
                    if main:
                        checkpoint.save_best(run_dir, snapshot)
            if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0 and iteration < num_iterations:
                save()
        stopped = (stop.requested or "a signal to another rank") if distributed.any_rank(stop.requested) \
            else ("stop_after_steps" if iteration < num_iterations else None)
        save()
        if stopped:
            if main:
                print(f"stopped ({stopped}) at step {global_step}; checkpoint saved. Continue with: "
                      f"{resume_command(run_dir)}", flush=True)
            return None
    finally:
        logger.close()
    if not main:
        return None

    wall = elapsed_before + time.perf_counter() - start_time
    returns_eval = evaluation[0] if evaluation is not None else []
    summary = {
        "env": env_cfg.id,
        "algo": algo_cfg.name,
        "seed": cfg.seed,
        "world_size": world,
        "total_timesteps": global_step,
        "wall_seconds": wall,
        "sps": global_step / wall,
        "eval_return_mean": float(np.mean(returns_eval)) if returns_eval else None,
        "eval_return_std": float(np.std(returns_eval)) if returns_eval else None,
        "eval_episodes": len(returns_eval),
        "best_eval_return_mean": best["return"],
        "best_eval_step": best["step"],
        "train_return_mean_last100": float(np.mean(recent_returns)) if recent_returns else None,
    }
    write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def _evaluate(cfg, acting_agent, env_kwargs, logger, global_step, final):
    """One evaluation point: run it, log it. Returns (returns, lengths)."""
    if final and not logger.interactive:
        logger.message(f"evaluating the final policy ({cfg.eval_episodes} episodes)")
    start = time.perf_counter()
    evaluation = evaluate(acting_agent, cfg.env.id, cfg.eval_episodes, cfg.seed + EVAL_SEED_OFFSET, env_kwargs,
                          progress=final and logger.interactive, backend=cfg.env.backend)
    mean, std = float(np.mean(evaluation[0])), float(np.std(evaluation[0]))
    # The mean length tells a policy that falls early from one that lives the whole episode slowly.
    logger.scalars({"eval/return": mean, "eval/return_std": std, "eval/length": float(np.mean(evaluation[1])),
                    "time/eval_seconds": time.perf_counter() - start}, global_step)
    logger.message(f"eval return {mean:.1f} +/- {std:.1f} at step {global_step}")
    return evaluation


def _check_ranks_agree(agent, iteration):
    """distributed_check: every rank's weights must be bit-identical after every update."""
    digests = distributed.gather_objects(checkpoint.payload_digest({"agent": agent.state_dict()}))
    if len(set(digests)) > 1:
        raise RanksDiverged(f"distributed_check: the ranks' weights differ after iteration {iteration} "
                            f"(digests {', '.join(d[:8] for d in digests)})")


def _iterate(iteration, num_iterations, algorithm, algo_cfg, agent, acting_agent, optimizers, generator,
             collector, global_step, nan_policy):
    """One iteration: anneal, collect, GAE, update. Returns its metrics (with the finished episodes).

    An update that leaves a NaN or inf in a loss or a weight raises NonFiniteError, or with
    `nan_policy=skip_update` is undone (weights and optimizer states as before it) and counted.
    """
    fraction_left = 1.0 - (iteration - 1) / num_iterations
    if algo_cfg.anneal_learning_rate:
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = fraction_left * algo_cfg.learning_rate
    rollout_start, communication_start = time.perf_counter(), distributed.communication_seconds()
    rollout, episodes = collector.collect(global_step)
    update_start = time.perf_counter()
    advantages, returns = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                              rollout.done, algo_cfg.gamma, algo_cfg.gae_lambda)
    before = None
    if nan_policy == "skip_update":
        before = (copy.deepcopy(agent.state_dict()), [copy.deepcopy(o.state_dict()) for o in optimizers.values()])
    metrics = algorithm.update(agent, optimizers, flatten(rollout, advantages, returns), algo_cfg, generator,
                               fraction_left)
    finite = bool(torch.isfinite(parameters_to_vector(agent.parameters())).all()) and all(
        np.isfinite(value) for value in metrics.values())
    skipped = 0
    if not finite:
        if before is None:
            bad = next((k for k, v in metrics.items() if not np.isfinite(v)), "the weights")
            raise NonFiniteError(f"the {algo_cfg.name} update at iteration {iteration} (global step "
                                 f"{global_step + rollout.rewards.numel()}) made {bad} non-finite; "
                                 "nan_policy=skip_update would undo such updates and go on")
        agent.load_state_dict(before[0])
        for optimizer, saved in zip(optimizers.values(), before[1]):
            optimizer.load_state_dict(saved)
        skipped = 1
        metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}
    if acting_agent is not agent:
        _sync_acting_agent(agent, acting_agent)
    metrics.update({
        "episodes": episodes,
        "charts/learning_rate": next(iter(optimizers.values())).param_groups[0]["lr"],
        "charts/skipped_updates": skipped,
        "time/rollout_seconds": update_start - rollout_start,
        "time/update_seconds": time.perf_counter() - update_start,
    })
    if distributed.world_size() > 1:
        metrics["time/communication_seconds"] = distributed.communication_seconds() - communication_start
    return metrics


def _sync_acting_agent(agent, acting_agent):
    """Normalizer statistics move from the acting copy to the learner, network weights the other way."""
    agent.obs_normalizer.load_state_dict(acting_agent.obs_normalizer.state_dict())
    agent.reward_scaler.load_state_dict(acting_agent.reward_scaler.state_dict())
    acting_agent.load_state_dict(agent.state_dict())


def load_resume(cfg):
    """For `resume=<run dir>`: the saved config with the allowed overrides applied, and the checkpoint.

    The original command line may be repeated: an override that names the value the run already has is
    fine; one that would change the run is refused, naming it.
    """
    run_dir = cfg.resume
    state = checkpoint.load(checkpoint.latest(run_dir), checkpoint_size_limit(run_dir))
    if state["run_config_digest"] != checkpoint.run_config_digest(run_dir):
        raise checkpoint.CheckpointError(f"{checkpoint.latest(run_dir)}: belongs to another run (its config is not "
                                         f"this folder's .hydra/config.yaml); refused")
    saved = checkpoint.config_of(state)
    # These describe this invocation, not the run.
    saved.resume, saved.stop_after_steps = cfg.resume, cfg.stop_after_steps
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.lstrip("+~").partition("=")
        if key in RESUME_OVERRIDABLE and not override.startswith("~"):
            OmegaConf.update(saved, key, cfg[key], force_add=True)
            continue
        if override.startswith("~") or not _same_as_saved(key, value, cfg, saved):
            was = saved.algo.name if key == "algo" else saved.env.id if key == "env" else \
                OmegaConf.select(saved, key, default="<absent>")
            raise ConfigError(key, value, f"differs from the run's {key}={was}; a resumed run keeps its config "
                                          f"(only {', '.join(RESUME_OVERRIDABLE[:-1])} may change)")
    return saved, state


def _same_as_saved(key, value, cfg, saved):
    if key == "algo":  # a config group: the saved run names the algorithm it used
        return value == saved.algo.name
    if key == "env":  # env=generic names its id separately, through env.id (compared on its own)
        return value in (saved.env.id, "generic")
    absent = object()
    return OmegaConf.select(saved, key, default=absent) == OmegaConf.select(cfg, key, default=absent) is not absent


def fail(message, exit_code=2):
    """One line on stderr and the exit code. In a distributed run, bad input is reported by rank 0 alone
    (every rank finds the same); a fault during the run by each rank that meets it."""
    if exit_code != 2 or distributed.env_rank() == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def _hydra_main(cfg):
    distributed.initialize()
    main_rank = distributed.is_main()
    # Rank 0's folder is the run's; the other ranks write nothing of their own.
    run_dir = distributed.broadcast_object(os.path.abspath(cfg.resume or HydraConfig.get().runtime.output_dir))
    resume_state = None
    try:
        if main_rank and run_dir not in _TAKEN:  # Hydra's default folder, created by Hydra just now
            _TAKEN[run_dir] = None
            run_folder.lock(run_dir)
        if cfg.resume:
            cfg, resume_state = _from_rank_zero(load_resume, cfg)
        resolve(cfg)
        device = distributed.use_device(validate(cfg))
        summary = train(cfg, run_dir, device, resume_state)
    except (ConfigError, checkpoint.CheckpointError, run_folder.RunFolderError) as error:
        if not cfg.resume and main_rank:  # a run that never started: undo what it added to its folder
            run_folder.undo(run_dir, _TAKEN.get(run_dir))
        fail(error)
    except RunFailed as error:
        fail(f"rank {distributed.rank()}: {error}" if distributed.world_size() > 1 else error, error.exit_code)
    if summary is not None:
        print(done_line(summary, run_dir), flush=True)


def _from_rank_zero(load, cfg):
    """Run `load(cfg)` -> (config, state) on rank 0 only (it reads the checkpoint) and hand every rank the
    result, or rank 0's refusal."""
    if distributed.world_size() == 1:
        return load(cfg)
    result, refusal = None, None
    if distributed.is_main():
        try:
            config, state = load(cfg)
            result = (OmegaConf.to_yaml(config), state)
        except (ConfigError, checkpoint.CheckpointError) as error:
            refusal = error
    result, message = distributed.broadcast_object((result, str(refusal) if refusal else None))
    if refusal is not None:
        raise refusal
    if message is not None:
        raise ConfigError("resume", cfg.resume, f"refused on rank 0: {message}")
    return OmegaConf.create(result[0]), result[1]


# Run folders this process took: {absolute path: the entries it held before, None if created here}, so a
# refused run can undo what it added.
_TAKEN = {}


def main():
    quiet_version_warnings()
    # A failing async worker's error comes back to us as an exception (one line); gymnasium would also log
    # it, with its traceback, at ERROR level. Its warnings still show.
    gym.logger.min_level = gym.logger.ERROR + 1
    # Hydra prints composition errors (an unknown env or algo config, a bad override) over several
    # lines and exits 1. We let them raise so they become one line and exit 2, like our own checks.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    resume = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("resume=")]
    run_dir = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("hydra.run.dir=")]
    resume = resume[-1] if resume and resume[-1] not in ("", "null") else None
    if resume:
        if not os.path.isdir(resume):
            fail(f"resume={resume}: no such run directory")
        # A resumed run writes into its own folder, and Hydra adds nothing there.
        sys.argv += [f"hydra.run.dir={resume}", "hydra.output_subdir=null"]
    folder = resume or (run_dir[-1] if run_dir else None)
    if distributed.requested() and distributed.env_rank() != 0:
        # Ranks other than 0 of a torchrun job write nothing: rank 0 takes the run folder and tells them
        # which it is. Hydra gets a scratch folder to create, removed at exit.
        scratch = tempfile.mkdtemp(prefix="rl-rank-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
        folder = None
    if folder:  # taken before Hydra writes its .hydra/ files into it
        before = os.listdir(folder) if os.path.isdir(folder) else None
        try:
            run_folder.prepare(folder, "resume" if resume else "hydra.run.dir")
            _TAKEN[os.path.abspath(folder)] = before
            run_folder.lock(folder, "resume" if resume else "hydra.run.dir")
        except run_folder.RunFolderError as error:
            if not resume:
                run_folder.undo(folder, before)
            fail(error)
        if not resume and os.path.lexists(checkpoint.checkpoint_dir(folder)):
            run_folder.undo(folder, before)
            fail(f"hydra.run.dir={folder}: already holds a run; continue it with resume=<dir> or choose another "
                 "folder")
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as error:
        if folder and not resume:
            run_folder.undo(folder, _TAKEN.get(os.path.abspath(folder)))
        fail(_describe_hydra_error(error))
    except OSError as error:  # Hydra creating its default run folder or writing .hydra/
        fail(f"{error.filename or 'run folder'}: cannot write ({error.strerror})")


def _describe_hydra_error(error):
    text = " ".join(str(error).split())
    missing = getattr(error, "missing_cfg_file", None)
    if missing and "/" in missing:
        group, name = missing.split("/", 1)
        options = ", ".join(o for o in getattr(error, "options", None) or [] if o != "common")
        hint = "; for any registered gymnasium id use env=generic env.id=<id>" if group == "env" else ""
        return f"{group}={name}: no config {missing}.yaml (available: {options}){hint}"
    return text


if __name__ == "__main__":
    main()
