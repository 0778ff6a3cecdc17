"""Real `python -m rl.train` processes for the tests (launched through rl.results), and what they wrote."""

import hashlib
import os
import time
from pathlib import Path

import torch

from rl import results

REPO = Path(__file__).resolve().parents[2]

# Short CartPole runs: PPO iterations are 8 envs x 32 steps, TRPO/NPG 4 envs x 256 steps.
BUDGET = {"ppo": 5120, "trpo": 6144, "npg": 6144}
ITERATION = {"ppo": 256, "trpo": 1024, "npg": 1024}


def launch(run_dir, *overrides):
    return results.start(results.train_command(run_dir, *overrides), cwd=REPO)


def finish(process, timeout=1200):
    """Wait for `process` (the timeout only stops a hang) and return (returncode, stdout, stderr)."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def wait_for_checkpoint(process, run_dir, timeout=900):
    """Block until `run_dir` has its first checkpoint while `process` still runs (a test then interrupts it)."""
    latest = Path(run_dir) / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    while not latest.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert latest.exists() and process.poll() is None, "the run ended (or stalled) before its first checkpoint"


def concurrent_runs():
    """Training processes one test may run at once: two (the CI machine has 2 cores) shared among pytest-xdist's
    workers, so `-n 2` keeps two processes on the cores, not four."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, 2 // workers)


def run_all(jobs, parallel=None):
    """Run {name: (run_dir, overrides)}, `concurrent_runs()` at a time. Returns {name: (rc, out, err)}."""
    parallel = parallel or concurrent_runs()
    done, pending, running = {}, list(jobs.items()), []
    while pending or running:
        while pending and len(running) < parallel:
            name, (run_dir, overrides) = pending.pop(0)
            running.append((name, launch(run_dir, *overrides)))
        name, process = running.pop(0)
        done[name] = finish(process)
    return done


def final_parameters(run_dir):
    directory = Path(run_dir) / "checkpoints"
    name = (directory / "latest").read_text().strip()
    return torch.load(directory / name, weights_only=True)["agent"]


def assert_same_run(first, second):
    """Every logged scalar and the final parameters of two run folders equal, bit for bit."""
    a, b = results.scalars(first), results.scalars(second)
    assert a.keys() == b.keys() and "losses/value_loss" in a
    for tag in a:
        assert a[tag] == b[tag], f"{tag} differs"
    assert same_parameters(final_parameters(first), final_parameters(second))


def same_parameters(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def folder_digest(path):
    """Names, sizes and contents of every file below `path`."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).rglob("*")):
        digest.update(str(file.relative_to(path)).encode())
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()
