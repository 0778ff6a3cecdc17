"""Algorithms: each module exposes `make_optimizers(agent, cfg)` and `update(agent, optimizers, batch, cfg,
generator) -> dict of metrics`. They never see envs, Hydra or the logger."""
