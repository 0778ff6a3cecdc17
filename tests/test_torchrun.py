"""`torchrun ... -m rl.train` end to end on CPU (gloo): one run folder, reproducible for a fixed world size,
exact resume at the same world size, one line for another, two 'nodes' on one machine, and a killed rank."""

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from rl import checkpoint, results
from rl.results import scalars
from tests.reproducibility.runs import final_parameters, same_parameters, wait_for_checkpoint

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them

REPO = Path(__file__).resolve().parent.parent
HANG = 900  # only a hang trips this


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two ranks on two cores


def torchrun(run_dir, *args, nproc=2, extra=()):
    return results.train_command(run_dir, *args, torchrun=[f"--nproc_per_node={nproc}", *extra])


def run(argv, cwd):
    return results.run(argv, cwd=cwd, env=ONE_THREAD, timeout=HANG)


CARTPOLE = ["total_timesteps=4096", "eval_every=2", "eval_episodes=2", "checkpoint_every=2", "seed=3",
            "distributed_check=true"]


def standalone(port):
    return ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--nnodes=1"]


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The same 2-rank run twice, and once stopped halfway then resumed with 2 ranks."""
    root = tmp_path_factory.mktemp("torchrun")
    done = {}
    for name, args in (("a", CARTPOLE), ("b", CARTPOLE), ("stopped", [*CARTPOLE, "stop_after_steps=2048"])):
        done[name] = run(torchrun(root / name, *args, extra=standalone(free_port())), root)
    done["resumed"] = run(torchrun(None, f"resume={root / 'stopped'}", extra=standalone(free_port())), root)
    for name, result in done.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    return root, done


def test_two_ranks_write_one_run_folder(twice):
    root, done = twice
    run_dir = root / "a"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["total_timesteps"] == 4096
    assert "batch        2 processes x 8 envs x 32 steps = 512 steps per iteration" in done["a"].stdout
    assert done["a"].stdout.count("run folder") == 1  # rank 0 alone speaks
    state = checkpoint.load(checkpoint.latest(str(run_dir)))
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "stopped"], "a rank left a folder behind"
    events = scalars(run_dir)
    assert len(events["charts/episodic_return"]) > 0 and len(events["eval/return"]) == 4


def test_two_rank_runs_are_reproducible(twice):
    root, _ = twice
    assert scalars(root / "a") == scalars(root / "b")
    assert same_parameters(final_parameters(root / "a"), final_parameters(root / "b"))


def test_resume_at_the_same_world_size_is_exact(twice):
    root, _ = twice
    assert scalars(root / "a") == scalars(root / "stopped")
    assert same_parameters(final_parameters(root / "a"), final_parameters(root / "stopped"))


def test_resume_with_another_world_size_is_one_line(twice):
    root, _ = twice
    result = run(results.train_command(None, f"resume={root / 'a'}", "total_timesteps=8192"), root)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "made by 2 process(es)" in lines[0], result.stderr


def test_two_nodes_on_one_machine_train_one_run(tmp_path):
    port = free_port()
    run_dir = tmp_path / "two_nodes"
    nodes = [results.start(torchrun(run_dir, *CARTPOLE, nproc=1,
                                    extra=["--nnodes=2", f"--node_rank={rank}", "--rdzv_backend=c10d",
                                           f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=rl-test"]),
                           cwd=tmp_path, env=ONE_THREAD) for rank in (0, 1)]
    outputs = [node.communicate(timeout=HANG) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-2000:] for _, err in outputs]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["total_timesteps"] == 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two_nodes"]


def ranks_of(launcher_pid):
    """{rank: pid} of the rl.train processes a torchrun started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode(
                errors="replace").split("\0") if "=" in item)
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), None)
        if parent == launcher_pid and "RANK" in environ:
            found[int(environ["RANK"])] = int(entry.name)
    return found


def test_killing_one_rank_ends_the_job_with_the_last_checkpoint_intact(tmp_path):
    run_dir = tmp_path / "killed"
    launcher = results.start(torchrun(run_dir, "total_timesteps=10000000", "eval_episodes=0", "checkpoint_every=2",
                                      extra=standalone(free_port())), cwd=tmp_path, env=ONE_THREAD)
    try:
        wait_for_checkpoint(launcher, run_dir)
        ranks = ranks_of(launcher.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = launcher.communicate(timeout=HANG)
        seconds = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert seconds < 120, f"the job took {seconds:.0f}s to end after a rank died"
    # Rank 0 says what happened in one line (torchrun then reports the dead rank its own way).
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "rank 0: lost contact with the other ranks" in ours[0], err[-3000:]
    assert "the last checkpoint (step" in ours[0] and "torchrun --nproc_per_node=2 -m rl.train resume=" in ours[0]
    state = checkpoint.load(checkpoint.latest(str(run_dir)))  # intact and sealed
    assert state["global_step"] > 0 and state["world_size"] == 2


def test_two_ranks_on_constant_returns_train_to_the_end(tmp_path):
    run_dir = tmp_path / "constant"
    result = run(torchrun(run_dir, "algo=ppo", "env=generic", "env.id=tests.faults.faulty_env:Faulty-v0",
                          "env.num_envs=2", "algo.num_steps=64", "algo.num_minibatches=2", "total_timesteps=1024",
                          "eval_episodes=0", "+env.kwargs.constant_return=true", extra=standalone(free_port())),
                 REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] == 1024
    assert len(scalars(run_dir)["losses/explained_variance"]) == 1024 // 256


@pytest.mark.slow
def test_two_rank_ppo_on_cartpole_seed_3_trains_through_the_solved_regime(tmp_path):
    """The run that died at iteration 118 of 195 when its critic targets became nearly constant (issue 21)."""
    run_dir = tmp_path / "solved"
    result = run(torchrun(run_dir, "algo=ppo", "env=CartPole-v1", "device=cpu", "seed=3", "eval_episodes=2",
                          extra=standalone(free_port())), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_timesteps"] == 99_840 and summary["world_size"] == 2
    assert summary["train_return_mean_last100"] > 400, summary  # it did reach the solved regime
