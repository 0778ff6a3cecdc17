"""rl: PPO, TRPO and NPG on vectorized gymnasium envs. `rl.load(run_dir)` gives a trained policy."""


def load(run_dir, path=None, checkpoint="latest"):
    """Load a run's checkpoint (`latest`, `best` or a global step), or the file `path`, as a TrainedPolicy.

    `load(run_dir).act(obs, deterministic=True)` applies the saved observation normalization.
    """
    from rl import checkpoint as checkpoints
    from rl.policy import trained_policy

    return trained_policy(checkpoints.load(path or checkpoints.resolve(run_dir, checkpoint)))
