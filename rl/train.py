"""The training loop: build the parts, then collect -> GAE -> update -> log -> evaluate -> checkpoint.

`python -m rl.train [algo=ppo|trpo|npg] [env=<id>] [key=value ...]` runs it through rl.cli, which reads the
command line (Hydra) and turns what goes wrong into one line and an exit code. Faults end the loop as
RunFailed with the last checkpoint intact; resume is rl.resume's.
"""

import copy
import os
import random
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import OmegaConf

from rl import checkpoint, distributed, resume
from rl.algos import ALGORITHMS
from rl.config import hparam_columns, hparam_values
from rl.envs import EnvError, close_vector_env, make_vector_env
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
from rl.guards import NonFiniteError, guarded_update
from rl.logger import Logger, describe_device, start_banner
from rl.policy import build_agent, sync_acting_copy
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


def train(cfg, run_dir, device, resume_state=None, stop=None):
    """Train as `cfg` says, writing everything under `run_dir`. Returns the summary dict, or None when the
    run stopped early (signal or `stop_after_steps`) with a checkpoint to resume from, and on ranks other
    than 0 of a distributed run. A fault raises RunFailed; env workers never outlive the call. `stop`: an
    installed StopRequest the caller keeps until the process returns (else one for this call alone)."""
    start_time = time.perf_counter()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)  # the same on every rank: the networks start identical
    envs = make_vector_env(cfg.env.id, cfg.env.num_envs, cfg.env.vectorization, cfg.env.start_method,
                           backend=cfg.env.backend, num_threads=cfg.env.num_threads,
                           preprocessing=cfg.env.preprocessing, env_wrappers=list(cfg.env.wrappers),
                           **OmegaConf.to_container(cfg.env.kwargs))
    saved = {"saved_step": resume_state["global_step"] if resume_state is not None else None, "step": 0}
    failed = True
    # The signal handlers stay through the clean-up: when a rank dies, torchrun SIGTERMs the others, and one
    # that met the failure first must still get to say what happened rather than die mid-clean-up.
    with nullcontext(stop) if stop is not None else StopRequest() as stop:
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
                          cfg.seed + distributed.rank() * cfg.env.num_envs,
                          env_episodes=cfg.env.preprocessing == "atari")
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
        stop.finish()
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
                                   backend=cfg.env.backend, preprocessing=cfg.env.preprocessing,
                                   env_wrappers=list(cfg.env.wrappers))
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

    A non-finite update stops the run or is undone and counted (rl.guards.guarded_update); a diagnostic that
    is undefined (explained variance of constant returns) is logged as NaN and does not stop the run.
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
    batch = flatten(rollout, advantages, returns)
    metrics, skipped = guarded_update(
        agent, optimizers, lambda: parts.algorithm.update(agent, optimizers, batch, algo_cfg, parts.generator,
                                                          fraction_left), nan_policy,
        f"the {algo_cfg.name} update at iteration {iteration} (global step {global_step + rollout.rewards.numel()})")
    if parts.acting_agent is not agent:
        sync_acting_copy(agent, parts.acting_agent)
    metrics.update({
        "episodes": episodes,
        "charts/learning_rate": next(iter(optimizers.values())).param_groups[0]["lr"],
        "charts/skipped_updates": int(skipped),
        "time/rollout_seconds": update_start - rollout_start,
        "time/update_seconds": time.perf_counter() - update_start,
    })
    if distributed.world_size() > 1:
        metrics["time/communication_seconds"] = distributed.communication_seconds() - communication_start
    return metrics


if __name__ == "__main__":  # `python -m rl.train`: the command line lives in rl.cli
    from rl.cli import main

    main(train)
