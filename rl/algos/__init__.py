"""Algorithms: each module exposes `make_optimizers(agent, cfg)` and `update(agent, optimizers, batch, cfg,
generator) -> dict of metrics`. They never see envs, Hydra or the logger."""

from rl.algos import ppo, trpo

# `algo.name` -> module; NPG is TRPO's step with a fixed size and no line search.
ALGORITHMS = {"ppo": ppo, "trpo": trpo, "npg": trpo}
