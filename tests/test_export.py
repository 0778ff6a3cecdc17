"""`python -m rl.export`: ONNX and TorchScript files that act like rl.load(run).act(), read by their own
runtimes on observations the export never saw, an example that needs neither torch nor rl, and refusals."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime
import pytest
import torch

import rl
from rl import checkpoint, results
from rl.export import CHECK_TOLERANCE, ExportError, exportable
from rl.export import main as export_main
from tests.reproducibility.runs import folder_digest

pytestmark = pytest.mark.slow  # two training runs and a dozen exports; the full suite (README, CI) runs them
REPO = Path(__file__).resolve().parent.parent
RUNS = {  # a discrete policy without normalization, and a Gaussian one with it
    "cartpole": ["algo=ppo", "env=CartPole-v1", "total_timesteps=2048", "eval_episodes=2"],
    "pendulum": ["algo=trpo", "env=generic", "env.id=Pendulum-v1", "env.normalize_observations=true",
                 "algo.num_steps=200", "total_timesteps=800", "eval_episodes=2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    for name, overrides in RUNS.items():
        results.train(root / name, *overrides, cwd=REPO, timeout=1200)
    return root


def exported(capsys, run_dir, *options):
    """Export in this process; returns the file's record (its .json)."""
    code = export_main([str(run_dir), *options])
    out, err = capsys.readouterr()
    assert code == 0, err
    path = out.split(" -> ")[1].split(";")[0]
    return json.loads(Path(f"{path}.json").read_text())


def fresh_observations(env_id, count=300, seed=123):
    """Observations of random play (not the policy's, not the export's seed)."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    observations, (obs, _) = [], env.reset(seed=seed)
    while len(observations) < count:
        observations.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return np.asarray(observations, dtype=np.float32)


def run_file(record, obs):
    if record["format"] == "onnx":
        session = onnxruntime.InferenceSession(record["file"], providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["obs"]
        assert [o.name for o in session.get_outputs()] == [o["name"] for o in record["outputs"]]
        return session.run(None, {"obs": obs})
    module = torch.jit.load(record["file"])
    with torch.no_grad():
        outputs = module(torch.from_numpy(obs))
    return [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]


@pytest.mark.parametrize("file_format", ["onnx", "torchscript"])
@pytest.mark.parametrize("name, env_id", [("cartpole", "CartPole-v1"), ("pendulum", "Pendulum-v1")])
def test_deterministic_export_acts_like_the_loaded_policy(runs, capsys, name, env_id, file_format):
    record = exported(capsys, runs / name, f"format={file_format}")
    assert record["env"] == env_id and record["deterministic"] is True and record["check"]["source"] == "env"
    obs = fresh_observations(env_id)
    (actions,) = run_file(record, obs)
    expected = rl.load(runs / name).act(obs)
    if name == "cartpole":
        assert actions.dtype == np.int64 and np.array_equal(actions, expected)
        assert record["outputs"][0]["dtype"] == "int64"
    else:
        assert actions.dtype == np.float32 and actions.shape == (len(obs), 1)
        assert np.all(np.abs(actions - expected) <= CHECK_TOLERANCE * np.maximum(1, np.abs(expected)))
        assert np.all(actions >= -2.0) and np.all(actions <= 2.0)  # Pendulum's bounds


def test_stochastic_export_gives_the_distributions_parameters(runs, capsys):
    record = exported(capsys, runs / "pendulum", "deterministic=false")
    assert [o["name"] for o in record["outputs"]] == ["mean", "log_std"]
    obs = fresh_observations("Pendulum-v1")
    mean, log_std = run_file(record, obs)
    # by hand: the saved statistics, then the actor's mean net and its log-std parameter
    agent = rl.load(runs / "pendulum").agent
    stats = agent.obs_normalizer.stats
    normalized = ((torch.from_numpy(obs) - stats.mean) / torch.sqrt(stats.var + 1e-8)).clamp(-10, 10).float()
    with torch.no_grad():
        expected_mean = agent.actor.net(normalized).numpy()
    assert np.allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
    assert np.allclose(log_std, agent.actor.log_std.detach().numpy()[None].repeat(len(obs), 0), atol=1e-7)


def test_the_example_needs_neither_torch_nor_rl_and_scores_what_rl_evaluate_prints(runs, capsys, tmp_path):
    record = exported(capsys, runs / "cartpole", f"out={tmp_path / 'cartpole.onnx'}")
    example = REPO / "examples" / "run_onnx_policy.py"
    imported = {line.split()[1].split(".")[0] for line in example.read_text().splitlines()
                if line.startswith(("import ", "from "))}
    assert imported == {"argparse", "json", "gymnasium", "numpy", "onnxruntime"}
    ran = results.run([sys.executable, str(example), record["file"], "--episodes", "3", "--seed", "10001"],
                      cwd=tmp_path, timeout=1200, check=True)
    played = json.loads(ran.stdout)
    evaluated = results.run([sys.executable, "-m", "rl.evaluate", str(runs / "cartpole"), "episodes=3"],
                            cwd=REPO, timeout=1200, check=True)
    assert json.loads((runs / "cartpole" / "eval.json").read_text())["returns"] == played["returns"], \
        evaluated.stdout


def test_refusals_are_one_line(runs, capsys, tmp_path):
    for argv, text in (([str(runs / "cartpole"), "format=tflite"], "format=tflite"),
                       ([str(tmp_path / "nothing")], "no such run directory"),
                       ([str(runs / "cartpole"), "checkpoint=77"], "checkpoint=77")):
        code = export_main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and text in err, err
    tampered = tmp_path / "tampered"
    shutil.copytree(runs / "cartpole", tampered)
    latest = Path(checkpoint.latest(str(tampered)))
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    before = folder_digest(tampered)
    assert export_main([str(tampered)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err and folder_digest(tampered) == before, err


def test_a_policy_kind_it_does_not_know_is_refused(runs):
    policy = rl.load(runs / "cartpole")
    exportable(policy)  # a categorical head: known (any observation space; see test_observation_envs.py)
    policy.agent.actor = torch.nn.Linear(4, 2)  # an actor of no head this exporter knows
    with pytest.raises(ExportError, match="cannot export a Linear policy yet"):
        exportable(policy)


def test_command_line_is_a_real_process(runs, tmp_path):
    out = tmp_path / "p.onnx"
    done = subprocess.run([sys.executable, "-m", "rl.export", str(runs / "cartpole"), f"out={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0 and "checked on 1000 observations from the env" in done.stdout, done.stderr
    assert out.exists() and Path(f"{out}.json").exists()


def test_latency_benchmark_times_every_runtime_at_both_batch_sizes(runs, tmp_path):
    out = tmp_path / "latency.json"
    results.run([sys.executable, str(REPO / "scripts" / "benchmark_export.py"), str(runs / "pendulum"), "--calls",
                 "20", "--json", str(out)], cwd=REPO, timeout=1200, check=True)
    rows = json.loads(out.read_text())["rows"]
    assert {(r["batch"], r["runtime"]) for r in rows} == {(b, name) for b in (1, 64) for name in
                                                        ("rl.load().act()", "onnxruntime", "torchscript")}
    assert all(r["median_us"] > 0 and r["p90_us"] >= r["median_us"] for r in rows)
