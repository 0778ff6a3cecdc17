"""Golden traces: short PPO, TRPO and NPG runs on CartPole and Hopper must log, step for step, the scalars a
reviewed commit logged, and end with the same weights (a digest). A refactor that is meant to change nothing
numerically passes; one that moves an algorithm by a rounding error fails, naming the first tag that moved.

The traces hold the numerical stack they were made with (torch, numpy, gymnasium, mujoco, and the CPU
instructions torch's kernels dispatch to: AVX2 and AVX-512 sum in other orders). On that stack the check is
bit for bit (every scalar, and a SHA-256 of the final weights); on another it is within a relative
OTHER_STACK_TOLERANCE (every scalar, and each weight tensor's norm), since other kernels or physics round
differently, with the few tags that are rounding noise by construction held to an absolute ROUNDING_LEVEL.
After a change that is meant to move the numbers, look at what moved, then write them again and commit them
with the change:

    python -m tests.test_golden --write
"""

import argparse
import hashlib
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from rl import results

REPO = Path(__file__).resolve().parent.parent
OTHER_STACK_TOLERANCE = 1e-3
# On another stack, these differ by more than OTHER_STACK_TOLERANCE relative and mean nothing by it: TRPO's and
# NPG's policy loss is the surrogate at theta_old, zero but for float32 rounding (~1e-8 here); CG's residuals
# after its last iteration are at the rounding floor of the Fisher products (1e-11 on CartPole, 4e-5 on Hopper,
# where another CPU moved them by 1e-6), so where CG stops on its residual tolerance (CartPole) it may stop
# one iteration sooner or later.
ROUNDING_LEVEL = {"losses/policy_loss": 1e-6, "trpo/cg_residual": 1e-5, "trpo/cg_relative_residual": 1e-5,
                  "trpo/cg_iterations": 1}
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

    versions = {name: version(name) for name in ("torch", "numpy", "gymnasium", "mujoco")}
    # The CPU model too: with the same instruction set, another model rounded differently (an AMD EPYC against
    # the AVX512 machine that first wrote the traces).
    return {**versions, "cpu": f"{torch.backends.cpu.get_cpu_capability()} {cpu_model()}"}


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def final_weights(run_dir):
    """(SHA-256 over the final checkpoint's tensors: names, dtypes, shapes and bytes, in name order;
    {name: norm} of its floating-point tensors)."""
    directory = Path(run_dir) / "checkpoints"
    agent = torch.load(directory / (directory / "latest").read_text().strip(), weights_only=True)["agent"]
    digest = hashlib.sha256()
    for name in sorted(agent):
        tensor = agent[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    norms = {name: float(t.double().norm()) for name, t in sorted(agent.items()) if t.is_floating_point()}
    return digest.hexdigest(), norms


def trace(name, root):
    """What the case logged (every scalar but wall-clock ones) and its final weights' digest."""
    run_dir = Path(root) / name
    results.train(run_dir, *CASES[name], cwd=REPO, timeout=1200)
    digest, norms = final_weights(run_dir)
    return {"overrides": CASES[name], "scalars": results.scalars(run_dir), "parameters": digest, "norms": norms}


def load(name):
    saved = json.loads((TRACES / f"{name}.json").read_text())
    saved["scalars"] = {tag: [tuple(point) for point in points] for tag, points in saved["scalars"].items()}
    return saved


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_logs_its_golden_trace_and_ends_with_the_same_weights(name, tmp_path):
    golden = load(name)
    assert golden["overrides"] == CASES[name], f"{name}: the case changed; write the traces again"
    now = trace(name, tmp_path)
    pinned = stack() == golden["stack"]
    where = (f"(traces made with {golden['stack']}, this is {stack()}: compared "
             f"{'bit for bit' if pinned else f'within {OTHER_STACK_TOLERANCE:g}'}; after an intended change: "
             "python -m tests.test_golden --write)")

    def same(value, golden_value, tag=None):
        if math.isnan(value) or math.isnan(golden_value):
            return math.isnan(value) and math.isnan(golden_value)
        return value == golden_value if pinned else value == pytest.approx(
            golden_value, rel=OTHER_STACK_TOLERANCE, abs=ROUNDING_LEVEL.get(tag, 1e-9))

    assert sorted(now["scalars"]) == sorted(golden["scalars"]), f"{name}: other tags were logged {where}"
    for tag in sorted(golden["scalars"]):
        for (step, value), (golden_step, golden_value) in zip(now["scalars"][tag], golden["scalars"][tag]):
            assert step == golden_step and same(value, golden_value, tag), \
                f"{name}: {tag} at step {golden_step} is {value!r}, the trace has {golden_value!r} {where}"
        assert len(now["scalars"][tag]) == len(golden["scalars"][tag]), f"{name}: {tag} logged other steps {where}"
    if pinned:
        assert now["parameters"] == golden["parameters"], f"{name}: same scalars, other final weights {where}"
    assert now["norms"].keys() == golden["norms"].keys()
    for tensor, norm in golden["norms"].items():
        assert same(now["norms"][tensor], norm), f"{name}: the norm of {tensor} moved {where}"


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
