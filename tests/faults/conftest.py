"""Shared pieces of the fault-injection suite: launching runs that are meant to fail, and reading what they left."""

import time
from pathlib import Path

import pytest

from rl import checkpoint, results

REPO = Path(__file__).resolve().parents[2]
FAULTY = "tests.faults.faulty_env:Faulty-v0"
# A hang-only limit: far above what any of these runs needs on a loaded machine, so only a real hang trips it.
HANG = 900


def faulty_overrides(fault, *extra, seed=1, fault_env=1, fault_after=0, marker=None, algo="ppo", num_envs=2,
                     vectorization="sync"):
    """A short run on the faulty env whose sub-env `fault_env` breaks as `fault` after `fault_after` steps."""
    overrides = [f"algo={algo}", "env=generic", f"env.id={FAULTY}", f"env.num_envs={num_envs}",
                 f"env.vectorization={vectorization}", "algo.num_steps=64", f"seed={seed}", "eval_episodes=0",
                 "checkpoint_every=1", f"+env.kwargs.fault={fault}", f"+env.kwargs.fault_seed={seed + fault_env}",
                 f"+env.kwargs.fault_after={fault_after}"]
    if algo == "ppo":
        overrides.append("algo.num_minibatches=2")
    else:
        overrides.append("algo.vf_minibatches=2")
    if marker is not None:
        overrides.append(f"+env.kwargs.marker={marker}")
    return overrides + list(extra)


def run(argv, preexec_fn=None):
    """Run to the end (or the hang limit). Returns (returncode, stdout, stderr, seconds)."""
    start = time.monotonic()
    result = results.run(argv, cwd=REPO, timeout=HANG, preexec_fn=preexec_fn)
    return result.returncode, result.stdout, result.stderr, time.monotonic() - start


def one_error_line(stderr):
    """The single non-empty stderr line a failed run must print (and no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def latest_state(run_dir):
    """The run's latest checkpoint, read through the same checks a resume applies."""
    return checkpoint.load(checkpoint.latest(str(run_dir)))


def leftover_processes(marker):
    """Processes whose command line mentions `marker` (a run folder): workers a dead run left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def marker(tmp_path):
    """A file whose presence keeps the faulty env broken; delete it to mend the env."""
    path = tmp_path / "broken"
    path.write_text("")
    return path
