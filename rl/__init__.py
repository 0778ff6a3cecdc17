"""rl: PPO, TRPO and NPG on vectorized gymnasium envs. `rl.load(run_dir)` gives a trained policy."""


def load(run_dir, path=None, checkpoint="latest"):
    """Load a run's checkpoint (`latest`, `best` or a global step), or the file `path`, as a TrainedPolicy.

    `load(run_dir).act(obs, deterministic=True)` applies the saved observation normalization. No env is made.
    """
    from rl.trained import load as load_trained

    return load_trained(run_dir, path, checkpoint)
