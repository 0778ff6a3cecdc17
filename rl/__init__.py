"""rl: PPO, TRPO and NPG on vectorized gymnasium envs. `rl.load(run_dir)` gives a trained policy."""


def load(run_dir, path=None):
    """Load the latest checkpoint of a run (or the checkpoint file `path`) as a TrainedPolicy.

    `load(run_dir).act(obs, deterministic=True)` applies the saved observation normalization.
    """
    import gymnasium as gym
    from omegaconf import OmegaConf

    from rl import checkpoint
    from rl.policy import TrainedPolicy, build_agent

    state = checkpoint.load(path or checkpoint.latest(run_dir))
    config = OmegaConf.create(state["config"])
    env = gym.make(config.env.id, **OmegaConf.to_container(config.env.kwargs))
    try:
        agent = build_agent(config, env.observation_space, env.action_space)
        agent.load_state_dict(state["agent"])
        return TrainedPolicy(agent, env.observation_space, env.action_space, config)
    finally:
        env.close()
