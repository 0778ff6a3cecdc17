"""scripts/policy_drift.py: swapping weights and observation statistics between two checkpoints of a run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Normal, kl_divergence

from tests import scripts_path

REPO = Path(__file__).resolve().parent.parent
drift = scripts_path.script("policy_drift")
# TRPO on Pendulum (a Gaussian policy, normalized observations): 200-step iterations, a checkpoint and an
# evaluation after each.
STEPS = (400, 800)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift") / "run"
    subprocess.run([sys.executable, "-m", "rl.train", "algo=trpo", "env=generic", "env.id=Pendulum-v1",
                    "env.normalize_observations=true", "algo.num_steps=200", "total_timesteps=800",
                    "checkpoint_every=1", "checkpoint_keep=10", "eval_every=1", "eval_episodes=2",
                    "progress=false", f"hydra.run.dir={folder}"],
                   cwd=REPO, check=True, capture_output=True, timeout=1200)
    return folder


def logged_evaluations(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in ("eval/return", "eval/length")}


def test_own_weights_and_statistics_reproduce_the_runs_evaluations(run_dir, tmp_path):
    out = tmp_path / "drift.json"
    assert drift.main([str(run_dir), *map(str, STEPS), "--episodes", "2", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    logged = logged_evaluations(run_dir)
    for name, step in (("weights a, statistics a", STEPS[0]), ("weights b, statistics b", STEPS[1])):
        row = result["evaluations"][name]
        assert row["return"] == pytest.approx(logged["eval/return"][step], rel=1e-5)
        assert row["length"] == pytest.approx(logged["eval/length"][step])
        assert row["return_per_step"] == pytest.approx(row["return"] / row["length"])
    # the swaps are other policies: neither evaluates exactly like a run's own checkpoint
    own = {result["evaluations"][n]["return"] for n in ("weights a, statistics a", "weights b, statistics b")}
    assert not own & {result["evaluations"][n]["return"] for n in ("weights a, statistics b",
                                                                    "weights b, statistics a")}
    moved = result["drift"]
    assert moved["kl"] > 0 and moved["kl_weights"] > 0 and moved["kl_statistics"] > 0
    assert moved["states"] == 2 * 200  # Pendulum's episodes last 200 steps


def test_a_checkpoint_against_itself_has_not_moved(run_dir):
    result = drift.compare(run_dir, STEPS[0], STEPS[0], episodes=1)
    assert result["drift"] == {"kl": 0.0, "kl_weights": 0.0, "kl_statistics": 0.0, "states": 200}
    assert len({row["return"] for row in result["evaluations"].values()}) == 1


def test_kl_agrees_with_torch_distributions_on_raw_observations(run_dir):
    agent_a, _ = drift.load_agent(run_dir, STEPS[0])
    agent_b, _ = drift.load_agent(run_dir, STEPS[1])
    *_, states = drift.evaluate_keeping_states(agent_a, "Pendulum-v1", 1, 10_001, {})

    def normal(agent):  # normalize by hand from the saved statistics, then the Gaussian the actor outputs
        stats = agent.obs_normalizer.stats
        normalized = ((states - stats.mean) / torch.sqrt(stats.var + 1e-8)).clamp(-10, 10).float()
        return Normal(agent.actor.net(normalized), agent.actor.log_std.exp())

    with torch.no_grad():
        expected = kl_divergence(normal(agent_a), normal(agent_b)).sum(-1).mean()
    assert drift.mean_kl(agent_a, agent_b, states) == pytest.approx(float(expected), rel=1e-4)


def test_a_missing_checkpoint_is_one_line(run_dir, capsys):
    assert drift.main([str(run_dir), "400", "12345"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint=12345: no such checkpoint" in err
