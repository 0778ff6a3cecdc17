"""Golden traces: short PPO, TRPO and NPG runs on CartPole and Hopper must log, step for step, the scalars a
reviewed commit logged, and end with the same weights (a digest). A refactor that is meant to change nothing
numerically passes; one that moves an algorithm by a rounding error fails, naming the first tag that moved.

The traces hold the numerical stack they were made with (torch, numpy, gymnasium, mujoco); they are
bit-exact on the CPU for that stack. After a change that is meant to move the numbers, look at what moved,
then write them again and commit them with the change:

    python -m tests.test_golden --write
"""

import argparse
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from rl import results

REPO = Path(__file__).resolve().parent.parent
TRACES = Path(__file__).resolve().parent / "golden"
# Three iterations each (two on Hopper), evaluated at the end, with the shipped configs otherwise.
CASES = {
    "ppo_cartpole": ["algo=ppo", "env=CartPole-v1", "total_timesteps=768", "eval_episodes=1"],
    "trpo_cartpole": ["algo=trpo", "env=CartPole-v1", "total_timesteps=3072", "eval_episodes=1"],
    "npg_cartpole": ["algo=npg", "env=CartPole-v1", "total_timesteps=3072", "eval_episodes=1"],
    "ppo_hopper": ["algo=ppo", "env=Hopper-v4", "algo.num_steps=256", "total_timesteps=1024", "eval_episodes=1"],
    "trpo_hopper": ["algo=trpo", "env=Hopper-v4", "algo.num_steps=256", "total_timesteps=1024", "eval_episodes=1"],
    "npg_hopper": ["algo=npg", "env=Hopper-v4", "algo.num_steps=256", "total_timesteps=1024", "eval_episodes=1"],
}


def stack():
    """The versions whose arithmetic a trace depends on."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "numpy", "gymnasium", "mujoco")}


def parameters_digest(run_dir):
    """SHA-256 over the final checkpoint's tensors (names, dtypes, shapes and bytes), in name order."""
    directory = Path(run_dir) / "checkpoints"
    agent = torch.load(directory / (directory / "latest").read_text().strip(), weights_only=True)["agent"]
    digest = hashlib.sha256()
    for name in sorted(agent):
        tensor = agent[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def trace(name, root):
    """What the case logged (every scalar but wall-clock ones) and its final weights' digest."""
    run_dir = Path(root) / name
    results.train(run_dir, *CASES[name], cwd=REPO, timeout=1200)
    return {"overrides": CASES[name], "scalars": results.scalars(run_dir), "parameters": parameters_digest(run_dir)}


def load(name):
    saved = json.loads((TRACES / f"{name}.json").read_text())
    saved["scalars"] = {tag: [tuple(point) for point in points] for tag, points in saved["scalars"].items()}
    return saved


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_logs_its_golden_trace_and_ends_with_the_same_weights(name, tmp_path):
    golden = load(name)
    assert golden["overrides"] == CASES[name], f"{name}: the case changed; write the traces again"
    now = trace(name, tmp_path)
    where = (f"(traces made with {golden['stack']}, this is {stack()}; after an intended change: "
             "python -m tests.test_golden --write)")
    assert sorted(now["scalars"]) == sorted(golden["scalars"]), f"{name}: other tags were logged {where}"
    for tag in sorted(golden["scalars"]):
        for (step, value), (golden_step, golden_value) in zip(now["scalars"][tag], golden["scalars"][tag]):
            same = value == golden_value or (math.isnan(value) and math.isnan(golden_value))
            assert step == golden_step and same, \
                f"{name}: {tag} at step {golden_step} is {value!r}, the trace has {golden_value!r} {where}"
        assert len(now["scalars"][tag]) == len(golden["scalars"][tag]), f"{name}: {tag} logged other steps {where}"
    assert now["parameters"] == golden["parameters"], f"{name}: same scalars, other final weights {where}"


def write(names):
    TRACES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as root:
        for name in names:
            made = {**trace(name, root), "stack": stack()}
            (TRACES / f"{name}.json").write_text(json.dumps(made, indent=1) + "\n")
            print(f"wrote {TRACES / name}.json: {sum(len(v) for v in made['scalars'].values())} points", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="write the golden traces again (after an intended change)")
    parser.add_argument("--write", action="store_true", required=True)
    parser.add_argument("names", nargs="*", default=sorted(CASES))
    args = parser.parse_args()
    write(args.names)
    sys.exit(0)
