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
from dataclasses import dataclass, field

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rl import checkpoint, distributed, resume, run_folder
from rl.algos import ALGORITHMS
from rl.config import CONFIG_DIR, ConfigError, hparam_columns, hparam_values, resolve, validate
from rl.envs import EnvError, close_vector_env, make_vector_env, quiet_version_warnings
from rl.evaluate import EVAL_SEED_OFFSET, evaluate
from rl.faults import (
    RanksDiverged,
    RunFailed,
    StopRequest,
    check_ranks_agree,
    describe_fault,
    first_line,
    kept,
    resume_command,
)
from rl.files import write_json
from rl.guards import NonFiniteError, first_non_finite
from rl.logger import Logger, describe_device, done_line, start_banner
from rl.policy import build_agent
from rl.rollout import Collector, flatten, gae
from rl.trained import write_spaces


@dataclass
class Parts:
    """What a run is made of on this rank; a checkpoint restores all of it (rl.resume.restore)."""

    envs: object
    agent: torch.nn.Module
    acting_agent: torch.nn.Module  # the CPU copy that acts in the envs (the agent itself on a CPU learner)
    optimizers: dict
    generator: torch.Generator  # minibatch shuffling: the same on every rank
    collector: Collector
    algorithm: object  # the module of rl.algos


@dataclass
class Progress:
    """What the loop carries from iteration to iteration, and into every checkpoint."""

    iteration: int = 0
    global_step: int = 0
    elapsed_before: float = 0.0  # wall seconds of the processes before a resume
    best: dict = field(default_factory=lambda: {"return": None, "step": None})
    recent_returns: deque = field(default_factory=lambda: deque(maxlen=100))
    config_digest: str = None
    evaluation: tuple = None  # (returns, lengths) of the latest evaluation point


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
    envs = make_vector_env(cfg.env.id, cfg.env.num_envs, cfg.env.vectorization, cfg.env.start_method,
                           backend=cfg.env.backend, num_threads=cfg.env.num_threads,
                           **OmegaConf.to_container(cfg.env.kwargs))
    saved = {"saved_step": resume_state["global_step"] if resume_state is not None else None, "step": 0}
    failed = True
    # The signal handlers stay through the clean-up: when a rank dies, torchrun SIGTERMs the others, and one
    # that met the failure first must still get to say what happened rather than die mid-clean-up.
    with StopRequest() as stop:
        try:
            summary = _train(cfg, run_dir, device, resume_state, envs, start_time, saved, stop)
            failed = False
            return summary
        except (EnvError, NonFiniteError, RanksDiverged, OSError, EOFError, KeyboardInterrupt) as error:
            raise RunFailed(*describe_fault(error, envs, run_dir, saved)) from None
        except RuntimeError as error:
            if distributed.world_size() == 1:
                raise
            # A collective failed: another rank died or was killed (its own message names why).
            raise RunFailed(f"lost contact with the other ranks ({first_line(error)}); {kept(run_dir, saved)}") \
                from None
        finally:
            close_vector_env(envs, failed)


def build(cfg, device, envs):
    """The run's parts, made in the order that fixes every random draw (weights first, then each rank's
    streams, then the first observations)."""
    algorithm = ALGORITHMS[cfg.algo.name]
    agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space).to(device)
    # Acting stays on the CPU where the envs are: one small batch per step is cheaper there than a
    # host-device round trip. On a GPU learner we act with a CPU copy refreshed after every update.
    acting_agent = agent if torch.device(device).type == "cpu" else copy.deepcopy(agent).cpu()
    optimizers = algorithm.make_optimizers(agent, cfg.algo)
    if distributed.rank() > 0:  # each rank samples its own actions; rank 0 draws what one process would
        seed_everything(cfg.seed + resume.SEED_STRIDE * distributed.rank())
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    # Rank r's sub-env i is the run's env r * num_envs + i, seeded seed + r * num_envs + i.
    collector = Collector(envs, acting_agent, cfg.algo.num_steps, device,
                          cfg.seed + distributed.rank() * cfg.env.num_envs)
    return Parts(envs, agent, acting_agent, optimizers, generator, collector, algorithm)


def _train(cfg, run_dir, device, resume_state, envs, start_time, saved, stop):
    world, main = distributed.world_size(), distributed.is_main()
    parts = build(cfg, device, envs)
    batch_size = world * cfg.env.num_envs * cfg.algo.num_steps  # global: every rank's envs
    num_iterations = cfg.total_timesteps // batch_size
    progress = Progress(config_digest=checkpoint.run_config_digest(run_dir) if main else None)
    if resume_state is not None:
        resume.restore(resume_state, parts, cfg, batch_size)
        progress = Progress(resume_state["iteration"], resume_state["global_step"], resume_state["wall_seconds"],
                            dict(resume_state["best_eval"]),
                            deque(resume_state["recent_returns"].tolist(), maxlen=100),
                            resume_state["run_config_digest"])
    elif main:
        write_spaces(run_dir, envs.single_observation_space, envs.single_action_space)
    logger = Logger(run_dir, OmegaConf.to_yaml(cfg), hparam_values(cfg, device), hparam_columns(),
                    num_iterations * batch_size, cfg.progress, start_step=progress.global_step,
                    resumed=resume_state is not None, enabled=main)
    if main:
        print(start_banner(run_dir, cfg.algo.name, cfg.env.id, describe_device(device, cfg.device),
                           cfg.env.num_envs, cfg.algo.num_steps, num_iterations, cfg.total_timesteps,
                           progress.global_step, world), flush=True)

    def save(best=False):
        snapshot = resume.snapshot(cfg, parts, progress, progress.elapsed_before + time.perf_counter() - start_time)
        if main and best:
            checkpoint.save_best(run_dir, snapshot)
        elif main:
            checkpoint.save(run_dir, snapshot, progress.global_step, cfg.checkpoint_keep)
        if not best:
            saved["saved_step"] = progress.global_step

    try:
        stopped = _loop(cfg, parts, progress, logger, stop, save, saved, num_iterations, batch_size, start_time)
        save()
        if stopped:
            if main:
                print(f"stopped ({stopped}) at step {progress.global_step}; checkpoint saved. Continue with: "
                      f"{resume_command(run_dir)}", flush=True)
            return None
    finally:
        logger.close()
    return write_summary(cfg, run_dir, progress, start_time) if main else None


def _loop(cfg, parts, progress, logger, stop, save, saved, num_iterations, batch_size, start_time):
    """Iterations until the budget, `stop_after_steps` or a stop request. Returns why it stopped early, or None."""
    stop_at = cfg.stop_after_steps if cfg.stop_after_steps is not None else num_iterations * batch_size
    while progress.iteration < num_iterations and progress.global_step < stop_at and \
            not distributed.any_rank(stop.requested):
        progress.iteration += 1
        saved["step"] = progress.global_step
        metrics = iterate(parts, cfg.algo, progress.iteration, num_iterations, progress.global_step, cfg.nan_policy)
        if cfg.distributed_check:
            check_ranks_agree(parts.agent, progress.iteration)
        progress.global_step += batch_size
        episodes = [e for rank_episodes in distributed.gather_objects(metrics.pop("episodes"))
                    for e in rank_episodes]
        progress.recent_returns.extend(episode_return for episode_return, _ in episodes)
        logger.episodes(episodes, progress.global_step)
        sps = progress.global_step / (progress.elapsed_before + time.perf_counter() - start_time)
        last = progress.iteration == num_iterations
        if progress.iteration % cfg.log_every == 0 or last:
            logger.scalars({**metrics, "charts/sps": sps}, progress.global_step)
        logger.progress(progress.global_step, sps)
        if cfg.eval_episodes > 0 and (last or (cfg.eval_every and progress.iteration % cfg.eval_every == 0)):
            if distributed.broadcast_object(_evaluate(cfg, parts, progress, logger, last)):
                save(best=True)
        if cfg.checkpoint_every and progress.iteration % cfg.checkpoint_every == 0 and not last:
            save()
    if distributed.any_rank(stop.requested):
        return stop.requested or "a signal to another rank"
    return "stop_after_steps" if progress.iteration < num_iterations else None


def write_summary(cfg, run_dir, progress, start_time):
    wall = progress.elapsed_before + time.perf_counter() - start_time
    returns = progress.evaluation[0] if progress.evaluation is not None else []
    summary = {
        "env": cfg.env.id,
        "algo": cfg.algo.name,
        "seed": cfg.seed,
        "world_size": distributed.world_size(),
        "total_timesteps": progress.global_step,
        "wall_seconds": wall,
        "sps": progress.global_step / wall,
        "eval_return_mean": float(np.mean(returns)) if returns else None,
        "eval_return_std": float(np.std(returns)) if returns else None,
        "eval_episodes": len(returns),
        "best_eval_return_mean": progress.best["return"],
        "best_eval_step": progress.best["step"],
        "train_return_mean_last100": float(np.mean(progress.recent_returns)) if progress.recent_returns else None,
    }
    write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def _evaluate(cfg, parts, progress, logger, final):
    """One evaluation point on rank 0 (the others wait at the next collective): run it, log it, keep the best.
    Returns whether it is the best so far."""
    if not distributed.is_main():
        return False
    if final and not logger.interactive:
        logger.message(f"evaluating the final policy ({cfg.eval_episodes} episodes)")
    start = time.perf_counter()
    progress.evaluation = evaluate(parts.acting_agent, cfg.env.id, cfg.eval_episodes, cfg.seed + EVAL_SEED_OFFSET,
                                   OmegaConf.to_container(cfg.env.kwargs), progress=final and logger.interactive,
                                   backend=cfg.env.backend)
    mean, std = float(np.mean(progress.evaluation[0])), float(np.std(progress.evaluation[0]))
    # The mean length tells a policy that falls early from one that lives the whole episode slowly.
    logger.scalars({"eval/return": mean, "eval/return_std": std,
                    "eval/length": float(np.mean(progress.evaluation[1])),
                    "time/eval_seconds": time.perf_counter() - start}, progress.global_step)
    logger.message(f"eval return {mean:.1f} +/- {std:.1f} at step {progress.global_step}")
    improved = progress.best["return"] is None or mean > progress.best["return"]
    if improved:
        progress.best.update({"return": mean, "step": progress.global_step})
    return improved


def iterate(parts, algo_cfg, iteration, num_iterations, global_step, nan_policy):
    """One iteration: anneal, collect, GAE, update. Returns its metrics (with the finished episodes).

    An update that leaves a NaN or inf where it can corrupt the run (a back-propagated loss, a weight, an
    optimizer's state, the normalizer statistics) raises NonFiniteError, or with `nan_policy=skip_update` is
    undone (weights and optimizer states as before it) and counted. A diagnostic that is undefined (explained
    variance of constant returns) is logged as NaN and does not stop the run.
    """
    agent, optimizers = parts.agent, parts.optimizers
    fraction_left = 1.0 - (iteration - 1) / num_iterations
    if algo_cfg.anneal_learning_rate:
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = fraction_left * algo_cfg.learning_rate
    rollout_start, communication_start = time.perf_counter(), distributed.communication_seconds()
    rollout, episodes = parts.collector.collect(global_step)
    update_start = time.perf_counter()
    advantages, returns = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                              rollout.done, algo_cfg.gamma, algo_cfg.gae_lambda)
    before = None
    if nan_policy == "skip_update":
        before = (copy.deepcopy(agent.state_dict()), [copy.deepcopy(o.state_dict()) for o in optimizers.values()])
    metrics = parts.algorithm.update(agent, optimizers, flatten(rollout, advantages, returns), algo_cfg,
                                     parts.generator, fraction_left)
    bad = first_non_finite(agent, optimizers, metrics)
    skipped = 0
    if bad is not None:
        if before is None:
            raise NonFiniteError(f"the {algo_cfg.name} update at iteration {iteration} (global step "
                                 f"{global_step + rollout.rewards.numel()}) made {bad} non-finite; "
                                 "nan_policy=skip_update would undo such updates and go on")
        agent.load_state_dict(before[0])
        for optimizer, saved in zip(optimizers.values(), before[1]):
            optimizer.load_state_dict(saved)
        skipped = 1
        metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}
    if parts.acting_agent is not agent:
        _sync_acting_agent(agent, parts.acting_agent)
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


def fail(message, exit_code=2):
    """One line on stderr and the exit code. In a distributed run, bad input is reported by rank 0 alone
    (every rank finds the same); a fault during the run by each rank that meets it."""
    if exit_code != 2 or distributed.env_rank() == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def _hydra_main(cfg):
    distributed.initialize()
    # Rank 0's folder is the run's; the other ranks write nothing of their own.
    run_dir = distributed.broadcast_object(os.path.abspath(cfg.resume or HydraConfig.get().runtime.output_dir))
    resume_state = None
    try:
        if distributed.is_main():
            run_folder.take(run_dir, created=True)  # a no-op unless this is Hydra's default folder, new now
        if cfg.resume:
            overrides = list(HydraConfig.get().overrides.task)
            cfg, resume_state = resume.on_rank_zero(resume.load_resume, cfg, overrides)
        resolve(cfg)
        summary = train(cfg, run_dir, distributed.use_device(validate(cfg)), resume_state)
    except (ConfigError, checkpoint.CheckpointError, run_folder.RunFolderError) as error:
        if distributed.is_main():  # a run that never started: undo what it added to its folder
            run_folder.release_refused(run_dir)
        fail(error)
    except RunFailed as error:
        fail(f"rank {distributed.rank()}: {error}" if distributed.world_size() > 1 else error, error.exit_code)
    if summary is not None:
        print(done_line(summary, run_dir), flush=True)


def main():
    quiet_version_warnings()
    # A failing async worker's error comes back to us as an exception (one line); gymnasium would also log
    # it, with its traceback, at ERROR level. Its warnings still show.
    gym.logger.min_level = gym.logger.ERROR + 1
    # Hydra prints composition errors (an unknown env or algo config, a bad override) over several
    # lines and exits 1. We let them raise so they become one line and exit 2, like our own checks.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    resumed, extra = resume.resume_arguments(sys.argv[1:])
    if resumed and not os.path.isdir(resumed):
        fail(f"resume={resumed}: no such run directory")
    run_dirs = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("hydra.run.dir=")]
    sys.argv += extra
    folder = resumed or (run_dirs[-1] if run_dirs else None)
    if distributed.requested() and distributed.env_rank() != 0:
        # Ranks other than 0 of a torchrun job write nothing: rank 0 takes the run folder and tells them
        # which it is. Hydra gets a scratch folder to create, removed at exit.
        scratch = tempfile.mkdtemp(prefix="rl-rank-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
        folder = None
    key = "resume" if resumed else "hydra.run.dir"
    if folder:  # taken before Hydra writes its .hydra/ files into it
        try:
            run_folder.take(folder, key)
            if not resumed and os.path.lexists(checkpoint.checkpoint_dir(folder)):
                raise run_folder.RunFolderError(f"hydra.run.dir={folder}: already holds a run; continue it with "
                                                "resume=<dir> or choose another folder")
        except run_folder.RunFolderError as error:
            run_folder.release_refused(folder)
            fail(error)
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as error:
        if folder:
            run_folder.release_refused(folder)
        fail(describe_hydra_error(error, sys.argv[1:]))
    except OSError as error:  # Hydra creating its default run folder or writing .hydra/
        fail(f"{error.filename or 'run folder'}: cannot write ({error.strerror})")


def describe_hydra_error(error, arguments):
    """One line for a Hydra composition or parse error, naming the argument or config at fault."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    text = " ".join(str(error).split("See https://")[0].split())
    if isinstance(error, OverrideParseException):
        parser = OverridesParser.create()
        for argument in (a for a in arguments if not a.startswith("-")):
            try:
                parser.parse_overrides([argument])
            except OverrideParseException:
                return f"{argument}: not a valid value ({text})"
    missing = getattr(error, "missing_cfg_file", None)
    if missing and "/" in missing:
        group, name = missing.split("/", 1)
        options = ", ".join(o for o in getattr(error, "options", None) or [] if o != "common")
        hint = "; for any registered gymnasium id use env=generic env.id=<id>" if group == "env" else ""
        return f"{group}={name}: no config {missing}.yaml (available: {options}){hint}"
    return text


if __name__ == "__main__":
    main()
