"""Entry point: `python -m rl.train [algo=ppo|trpo|npg] [env=<id>] [key=value ...]`.

Only this module knows Hydra. It validates the config, builds the parts and runs the loop:
collect -> GAE -> update -> log -> checkpoint, then a deterministic evaluation.
"""

import copy
import os
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rl.algos import ppo, trpo
from rl.config import ConfigError, validate
from rl.envs import make_vector_env
from rl.evaluate import evaluate
from rl.logger import Logger, write_json
from rl.policy import Agent
from rl.rollout import Collector, flatten, gae

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ALGORITHMS = {"ppo": ppo, "trpo": trpo, "npg": trpo}


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_agent(cfg, envs):
    algo, env = cfg.algo, cfg.env
    return Agent(envs.single_observation_space, envs.single_action_space,
                 actor_hidden_sizes=list(algo.actor_hidden_sizes),
                 critic_hidden_sizes=list(algo.critic_hidden_sizes), activation=algo.activation,
                 init_log_std=algo.init_log_std, normalize_observations=env.normalize_observations,
                 normalize_rewards=env.normalize_rewards, clip_observations=env.clip_observations,
                 clip_rewards=env.clip_rewards, gamma=algo.gamma)


def train(cfg, run_dir, device):
    """Train as `cfg` says, writing everything under `run_dir`. Returns the summary dict."""
    start_time = time.perf_counter()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    algo_cfg, env_cfg = cfg.algo, cfg.env
    algorithm = ALGORITHMS[algo_cfg.name]
    env_kwargs = OmegaConf.to_container(env_cfg.kwargs)

    envs = make_vector_env(env_cfg.id, env_cfg.num_envs, env_cfg.vectorization, env_cfg.start_method,
                           **env_kwargs)
    agent = build_agent(cfg, envs).to(device)
    # Acting stays on the CPU where the envs are: one small batch per step is cheaper there than a
    # host-device round trip. On a GPU learner we act with a CPU copy refreshed after every update.
    acting_agent = agent if torch.device(device).type == "cpu" else copy.deepcopy(agent).cpu()
    optimizers = algorithm.make_optimizers(agent, algo_cfg)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    collector = Collector(envs, acting_agent, algo_cfg.num_steps, device, cfg.seed)

    batch_size = env_cfg.num_envs * algo_cfg.num_steps
    num_iterations = cfg.total_timesteps // batch_size
    total_steps = num_iterations * batch_size
    config_text = OmegaConf.to_yaml(cfg)
    logger = Logger(run_dir, config_text, _hparams(cfg), total_steps, cfg.progress)

    global_step = 0
    try:
        for iteration in range(1, num_iterations + 1):
            if algo_cfg.get("anneal_learning_rate", False):
                fraction_left = 1.0 - (iteration - 1) / num_iterations
                for optimizer in optimizers.values():
                    for group in optimizer.param_groups:
                        group["lr"] = fraction_left * algo_cfg.learning_rate

            rollout_start = time.perf_counter()
            rollout, episodes = collector.collect()
            global_step += batch_size
            update_start = time.perf_counter()
            advantages, returns = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                      rollout.done, algo_cfg.gamma, algo_cfg.gae_lambda)
            metrics = algorithm.update(agent, optimizers, flatten(rollout, advantages, returns), algo_cfg,
                                       generator)
            if acting_agent is not agent:
                _sync_acting_agent(agent, acting_agent)
            now = time.perf_counter()

            logger.episodes(episodes, global_step)
            sps = global_step / (now - start_time)
            if iteration % cfg.log_every == 0 or iteration == num_iterations:
                metrics.update({
                    "charts/sps": sps,
                    "charts/learning_rate": next(iter(optimizers.values())).param_groups[0]["lr"],
                    "time/rollout_seconds": update_start - rollout_start,
                    "time/update_seconds": now - update_start,
                })
                logger.scalars(metrics, global_step)
            logger.progress(global_step, sps)
        envs.close()

        returns_eval = []
        if cfg.eval_episodes > 0:
            eval_agent = agent if acting_agent is agent else acting_agent
            returns_eval = evaluate(eval_agent, env_cfg.id, cfg.eval_episodes, cfg.seed + 10_000, env_kwargs)
            logger.scalars({"eval/return": float(np.mean(returns_eval))}, global_step)
    finally:
        logger.close()

    wall = time.perf_counter() - start_time
    summary = {
        "env": env_cfg.id,
        "algo": algo_cfg.name,
        "seed": cfg.seed,
        "total_timesteps": global_step,
        "wall_seconds": wall,
        "sps": global_step / wall,
        "eval_return_mean": float(np.mean(returns_eval)) if returns_eval else None,
        "eval_return_std": float(np.std(returns_eval)) if returns_eval else None,
        "eval_episodes": len(returns_eval),
    }
    write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def _sync_acting_agent(agent, acting_agent):
    """Normalizer statistics move from the acting copy to the learner, network weights the other way."""
    agent.obs_normalizer.load_state_dict(acting_agent.obs_normalizer.state_dict())
    agent.reward_scaler.load_state_dict(acting_agent.reward_scaler.state_dict())
    acting_agent.load_state_dict(agent.state_dict())


def _hparams(cfg):
    flat = {}
    for section in ("algo", "env"):
        for key, value in OmegaConf.to_container(cfg[section], resolve=True).items():
            if isinstance(value, (int, float, str, bool)):
                flat[f"{section}.{key}"] = value
    for key in ("seed", "total_timesteps", "device"):
        flat[key] = cfg[key]
    return flat


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def _hydra_main(cfg):
    try:
        device = validate(cfg)
    except ConfigError as error:
        fail(error)
    run_dir = HydraConfig.get().runtime.output_dir
    summary = train(cfg, run_dir, device)
    print(f"done: {summary['total_timesteps']} steps in {summary['wall_seconds']:.1f}s ({summary['sps']:.0f} sps), "
          f"eval return {summary['eval_return_mean']} over {summary['eval_episodes']} episodes -> {run_dir}")


def main():
    # Hydra prints composition errors (an unknown env or algo config, a bad override) over several
    # lines and exits 1. We let them raise so they become one line and exit 2, like our own checks.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as error:
        fail(_describe_hydra_error(error))


def _describe_hydra_error(error):
    text = " ".join(str(error).split())
    missing = getattr(error, "config_name", None)
    if missing and "/" in missing:
        group, name = missing.split("/", 1)
        options = ", ".join(getattr(error, "options", None) or [])
        hint = "; for any registered gymnasium id use env=generic env.id=<id>" if group == "env" else ""
        return f"{group}={name}: no config {missing}.yaml (available: {options}){hint}"
    return text


if __name__ == "__main__":
    main()
