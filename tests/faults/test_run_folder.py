"""One run per folder; a full disk; folders that cannot be run folders; a second Ctrl-C."""

import resource
import signal
import time

import pytest

from rl.results import train_command
from tests.faults.conftest import (
    HANG,
    faulty_overrides,
    latest_state,
    leftover_processes,
    one_error_line,
    run,
)
from tests.reproducibility.runs import folder_digest, launch, wait_for_checkpoint

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them
LONG = ["total_timesteps=10000000", "checkpoint_every=2", "eval_episodes=0"]  # runs until stopped


def start_and_wait_for_checkpoint(run_dir, *overrides):
    process = launch(run_dir, *overrides)
    wait_for_checkpoint(process, run_dir)
    return process


def stop(process):
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=HANG)
    return process.returncode, out, err


def test_a_second_process_in_a_busy_run_folder_is_refused_before_it_writes(tmp_path):
    run_dir = tmp_path / "busy"
    first = start_and_wait_for_checkpoint(run_dir, *LONG)
    try:
        config = (run_dir / ".hydra" / "config.yaml").read_bytes()
        for second in (train_command(run_dir, "seed=9", *LONG), train_command(run_dir, f"resume={run_dir}")):
            rc, _, err, _ = run(second)
            line = one_error_line(err)
            assert rc == 2 and "in use by another rl process" in line and f"pid {first.pid}" in line, line
        assert (run_dir / ".hydra" / "config.yaml").read_bytes() == config
    finally:
        rc, out, err = stop(first)
    assert rc == 0 and "stopped (SIGINT)" in out, err[-2000:]


def limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_leaves_no_tmp_and_resume_works_once_there_is_room(tmp_path):
    run_dir = tmp_path / "full"
    overrides = ["total_timesteps=2048", "checkpoint_every=2", "eval_episodes=0"]
    rc, _, err, _ = run(train_command(run_dir, *overrides, "stop_after_steps=512"))
    assert rc == 0, err[-2000:]
    before = latest_state(run_dir)["global_step"]
    # The next checkpoint (about 60 kB) cannot be written: the disk is "full" at 20 kB per file.
    rc, _, err, _ = run(train_command(run_dir, f"resume={run_dir}"), preexec_fn=limit_file_size(20_000))
    line = one_error_line(err)
    assert rc == 1 and f"{run_dir}: cannot write" in line and "File too large" in line, line
    assert f"(step {before}) is intact" in line
    assert not list(run_dir.rglob("*.tmp"))
    assert latest_state(run_dir)["global_step"] == before
    rc, _, err, _ = run(train_command(run_dir, f"resume={run_dir}"))
    assert rc == 0, err[-2000:]
    assert latest_state(run_dir)["global_step"] == 2048


def test_a_failure_with_async_workers_alive_ends_without_leftover_workers(tmp_path):
    run_dir = tmp_path / "async_full"
    overrides = faulty_overrides("none", "total_timesteps=4096", vectorization="async", num_envs=3)
    rc, _, err, seconds = run(train_command(run_dir, *overrides), preexec_fn=limit_file_size(20_000))
    line = one_error_line(err)
    assert rc == 1 and "cannot write" in line, line
    # the first checkpoint is the one that failed: nothing to resume, so no "once there is room" promise
    assert line.endswith("no checkpoint was written yet"), line
    assert not leftover_processes(str(run_dir))


def test_a_second_ctrl_c_stops_at_once_in_one_line_even_in_a_hung_env(tmp_path):
    run_dir, hanging = tmp_path / "hung", tmp_path / "hanging"
    # Sub-env 1's worker hangs in its step 300 (iteration 5 of 128 steps), after the checkpoint at step 512.
    overrides = faulty_overrides("hang", "total_timesteps=4096", f"+env.kwargs.hang_marker={hanging}",
                                 fault_after=300, vectorization="async")
    process = launch(run_dir, *overrides)
    deadline = time.monotonic() + HANG
    while not hanging.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hanging.exists() and process.poll() is None, "the run ended before its env hung"
    process.send_signal(signal.SIGINT)  # noted: the loop would stop after this iteration, which never ends
    time.sleep(1)  # two signals pending at once would count as one
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=HANG)
    line = one_error_line(err)
    assert process.returncode == 130 and "stopped at once by a second signal" in line, line
    assert not leftover_processes(str(run_dir))
    assert latest_state(run_dir)["global_step"] == 512


def bad_folder_cases(tmp_path):
    existing_file = tmp_path / "a_file"
    existing_file.write_text("not a folder")
    return {
        "existing_file": (existing_file, "exists and is not a folder"),
        "read_only_filesystem": ("/proc/rl-run-folder-test", "cannot create the run folder"),
        "name_too_long": (tmp_path / ("x" * 300), "cannot create the run folder"),
        # parents that do not exist yet must go again: one, then 24 levels whose whole path is over PATH_MAX
        "new_parent_and_name_too_long": (tmp_path / "new_parent" / ("x" * 300), "cannot create the run folder"),
        "path_too_long": (tmp_path / "deep" / "/".join(["y" * 200] * 24), "cannot create the run folder"),
    }


def test_folders_that_cannot_be_run_folders_are_one_line_and_leave_nothing(tmp_path):
    for name, (folder, text) in bad_folder_cases(tmp_path).items():
        before = folder_digest(tmp_path)
        rc, _, err, _ = run(train_command(folder, "total_timesteps=256"))
        line = one_error_line(err)
        assert rc == 2 and "hydra.run.dir=" in line and text in line, (name, line)
        assert folder_digest(tmp_path) == before, name

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err, _ = run(train_command(None, f"resume={empty}"))
    assert rc == 2 and "no checkpoint found" in one_error_line(err)
    assert list(empty.iterdir()) == [], "the refused resume left something (a .lock) behind"


def signal_after_line(process, text, signum):
    """Read `process`'s stdout until a line holds `text`, signal it at once, and return (rc, out, err, sent):
    `sent` is False when it had already exited (nothing was tested then)."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if text in line:
            break
    sent = process.poll() is None
    if sent:
        process.send_signal(signum)
    out, err = process.communicate(timeout=HANG)
    return process.returncode, "".join(seen) + out, err, sent


ATTEMPTS = 5  # a run may end before a signal sent on its last lines lands; each attempt must be clean


def test_a_second_ctrl_c_after_the_stop_was_saved_exits_130_in_one_line(tmp_path):
    landed = 0
    for attempt in range(ATTEMPTS):
        run_dir = tmp_path / f"late{attempt}"
        process = start_and_wait_for_checkpoint(run_dir, *LONG)
        process.send_signal(signal.SIGINT)
        rc, out, err, sent = signal_after_line(process, "stopped (SIGINT)", signal.SIGINT)
        assert "Traceback" not in err and rc in (0, 130), (rc, err[-2000:])  # before: killed by the signal (-2)
        assert latest_state(run_dir)["global_step"] > 0  # the stop's checkpoint is whole
        if rc == 130:
            line = one_error_line(err)
            assert "second signal (SIGINT) after the checkpoint was saved" in line and f"resume={run_dir}" in line
            landed += 1
            break
    assert landed, f"in {ATTEMPTS} runs the second signal never landed before the run ended"


def test_a_signal_as_the_done_line_prints_leaves_a_complete_run_exiting_0(tmp_path):
    for signum in (signal.SIGINT, signal.SIGTERM):
        sent = False
        for attempt in range(ATTEMPTS):
            run_dir = tmp_path / f"{signal.Signals(signum).name}{attempt}"
            process = launch(run_dir, "total_timesteps=512", "algo.num_steps=64", "eval_episodes=0")
            rc, out, err, sent = signal_after_line(process, "done:", signum)
            # before: a KeyboardInterrupt traceback and -2 (SIGINT), or death by the signal, -15 (SIGTERM)
            assert rc == 0 and "Traceback" not in err and not err.strip(), (signum, rc, err[-2000:])
            assert (run_dir / "summary.json").exists()
            if sent:
                break
        assert sent, f"in {ATTEMPTS} runs the {signal.Signals(signum).name} never found the run still alive"
