"""Updates that blow up: stop with one line and keep the last good checkpoint, or, with
nan_policy=skip_update, undo them and go on."""

import math

import pytest
import torch

from rl import results
from rl.results import train_command, values
from tests.faults.conftest import faulty_overrides, latest_state, one_error_line, run

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them

# Pendulum with a Gaussian policy; a learning rate of 1e30 sends the weights to inf within the first update.
EXPLODING = ["algo=ppo", "env=Pendulum-v1", "algo.num_steps=64", "algo.num_minibatches=2", "total_timesteps=768",
             "eval_episodes=1", "checkpoint_every=1", "algo.learning_rate=1e30", "algo.anneal_learning_rate=false"]


def test_a_non_finite_update_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "stop"
    rc, _, err, _ = run(train_command(run_dir, *EXPLODING))
    line = one_error_line(err)
    assert rc == 1 and "ppo update at iteration 1" in line and "non-finite" in line, line
    assert "no checkpoint was written yet" in line
    assert not (run_dir / "checkpoints" / "latest").exists() and not (run_dir / "summary.json").exists()


def test_skip_update_undoes_non_finite_updates_and_finishes(tmp_path):
    run_dir = tmp_path / "skip"
    rc, out, err, _ = run(train_command(run_dir, *EXPLODING, "nan_policy=skip_update"))
    assert rc == 0, err[-2000:]
    (skipped,) = values(run_dir, "charts/skipped_updates")
    assert skipped == [1.0] * 3  # 768 steps / (4 envs x 64): every update blew up and was undone
    state = latest_state(run_dir)
    assert all(torch.isfinite(t).all() for t in state["agent"].values() if t.is_floating_point())
    # Undone means undone: the weights are the initial ones (the same as a 0-step run with this seed).
    rc, _, err, _ = run(train_command(tmp_path / "fresh", *EXPLODING[:-3], "eval_episodes=0", "total_timesteps=256",
                                      "stop_after_steps=1", "algo.learning_rate=1e-30"))
    fresh = latest_state(tmp_path / "fresh")
    for key, tensor in state["agent"].items():
        if key.startswith(("actor.", "critic.")):
            assert torch.allclose(tensor, fresh["agent"][key], atol=1e-20), key


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_constant_returns_make_explained_variance_undefined_not_fatal(tmp_path, algo):
    run_dir = tmp_path / algo
    rc, _, err, _ = run(train_command(run_dir, *faulty_overrides("none", "total_timesteps=1024",
                                                                 "+env.kwargs.constant_return=true", algo=algo)))
    assert rc == 0, err[-2000:]
    assert results.summary(run_dir)["total_timesteps"] == 1024
    (explained,) = values(run_dir, "losses/explained_variance")
    assert len(explained) == 1024 // 128
    # The targets are 1 up to rounding: undefined (NaN) or meaningless, logged either way, never fatal.
    assert all(math.isnan(v) or v < 0.5 for v in explained), explained
