"""A sub-env that raises, returns NaN, or whose worker dies: one line naming it, a bounded exit, no worker
left behind, the last checkpoint intact, and a resume that works once the env is mended."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from rl.results import train_command
from tests.faults.conftest import (
    HANG,
    faulty_overrides,
    latest_state,
    leftover_processes,
    one_error_line,
    run,
)
from tests.reproducibility.runs import launch, wait_for_checkpoint

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_raising_sub_env_is_named_and_the_run_resumes_once_it_is_mended(tmp_path, marker, vectorization):
    run_dir = tmp_path / "raise"
    # 2 envs x 64 steps an iteration; sub-env 1 raises at its step 200, in iteration 4, after 3 checkpoints.
    overrides = faulty_overrides("raise", "total_timesteps=1024", fault_after=200, marker=marker,
                                 vectorization=vectorization)
    rc, out, err, seconds = run(train_command(run_dir, *overrides))
    line = one_error_line(err)
    assert rc == 1 and "sub-env 1" in line and "ValueError: injected fault at step 200" in line, line
    assert "step 384" in line and f"resume={run_dir}" in line  # the last checkpoint, and how to go on
    assert latest_state(run_dir)["global_step"] == 384
    assert not leftover_processes(str(run_dir)), "a worker outlived the run"
    assert not list((run_dir / "checkpoints").glob("*.tmp"))

    marker.unlink()  # mend the env
    rc, out, err, _ = run(train_command(run_dir, f"resume={run_dir}"))
    assert rc == 0, err[-2000:]
    assert latest_state(run_dir)["global_step"] == 1024


def test_a_sigterm_during_the_clean_up_of_a_failed_run_does_not_swallow_its_line(tmp_path):
    """When one torchrun rank dies, torchrun SIGTERMs the others, maybe while one is closing its envs after
    meeting the failure itself: it must still say what happened, not die silently of the signal."""
    run_dir, closing = tmp_path / "sigterm", tmp_path / "closing"
    overrides = faulty_overrides("raise", "total_timesteps=1024", f"+env.kwargs.close_marker={closing}",
                                 fault_after=100)
    process = launch(run_dir, *overrides)
    try:
        deadline = time.monotonic() + HANG
        while not closing.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert closing.exists() and process.poll() is None, "the run ended before closing its envs"
        process.send_signal(signal.SIGTERM)  # pending before the release: it lands while close() still waits
        Path(f"{closing}.release").touch()
        _, err = process.communicate(timeout=HANG)
    finally:
        if process.poll() is None:
            process.kill()
    line = one_error_line(err)
    assert process.returncode == 1 and "sub-env 1" in line and "injected fault at step 100" in line, line


def test_a_killed_worker_ends_the_run_in_bounded_time(tmp_path):
    run_dir = tmp_path / "killed"
    overrides = faulty_overrides("none", "total_timesteps=200000", vectorization="async", num_envs=3)
    process = launch(run_dir, *overrides)
    try:
        wait_for_checkpoint(process, run_dir)
        workers = [pid for pid in leftover_processes(str(run_dir)) if pid != process.pid]
        assert len(workers) == 3, workers
        os.kill(workers[1], signal.SIGKILL)
        started = time.monotonic()
        _, err = process.communicate(timeout=HANG)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    line = one_error_line(err)
    assert process.returncode == 1 and "env worker" in line and "died" in line, line
    assert seconds < 60, f"took {seconds:.0f}s to notice a dead worker"
    assert not leftover_processes(str(run_dir))
    state = latest_state(run_dir)  # intact and loadable
    assert state["global_step"] > 0
    rc, _, err, _ = run(train_command(run_dir, f"resume={run_dir}", "total_timesteps=" + str(state["global_step"] + 384)))
    assert rc == 0, err[-2000:]


def test_a_worker_that_exits_mid_step_is_reported(tmp_path):
    run_dir = tmp_path / "exits"
    overrides = faulty_overrides("exit", "total_timesteps=1024", fault_after=100, vectorization="async")
    rc, _, err, seconds = run(train_command(run_dir, *overrides))
    line = one_error_line(err)
    assert rc == 1 and "env worker of sub-env 1 died" in line, line
    assert not leftover_processes(str(run_dir))
    assert latest_state(run_dir)["global_step"] == 128


@pytest.mark.parametrize("fault, source", [("nan_obs", "observation"), ("nan_reward", "reward")])
@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_nan_from_the_env_stops_the_run_before_it_reaches_a_checkpoint(tmp_path, fault, source, algo):
    run_dir = tmp_path / f"{algo}_{fault}"
    # Gaussian policies (a Box action space), as on Pendulum or MuJoCo.
    overrides = faulty_overrides(fault, "total_timesteps=1024", "+env.kwargs.continuous=true", fault_after=149,
                                 algo=algo)
    rc, _, err, _ = run(train_command(run_dir, *overrides))
    line = one_error_line(err)
    # Sub-env 1's 149th step is global step 2 * 148 + 1 = 297, in the third iteration (steps 256-383).
    assert rc == 1 and f"non-finite {source} (nan) from sub-env 1 at global step 297" in line, line
    state = latest_state(run_dir)
    assert state["global_step"] == 256
    assert all(torch.isfinite(t).all() for t in state["agent"].values() if t.is_floating_point())
    assert not (run_dir / "summary.json").exists()


def test_nan_in_the_true_last_observation_of_a_truncated_episode_is_caught(tmp_path):
    run_dir = tmp_path / "final_obs"
    # Sub-env 1's 150th step ends its third episode: the NaN is in the final observation, used to bootstrap.
    rc, _, err, _ = run(train_command(run_dir, *faulty_overrides("nan_obs", "total_timesteps=1024",
                                                                  fault_after=150)))
    line = one_error_line(err)
    assert rc == 1 and "non-finite final observation (nan) from sub-env 1 at global step 299" in line, line
