"""`python -m rl.train` end to end: run folder contents, TensorBoard tags, and one-line errors for bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {"env", "algo", "seed", "total_timesteps", "wall_seconds", "sps", "eval_return_mean",
                "eval_return_std", "eval_episodes"}
SCALAR_TAGS = {"charts/episodic_return", "charts/episodic_length", "charts/sps", "charts/learning_rate",
               "losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
               "losses/clipfrac", "losses/explained_variance", "time/rollout_seconds", "time/update_seconds",
               "eval/return"}


def command(run_dir, *overrides):
    return [sys.executable, "-m", "rl.train", *overrides, f"hydra.run.dir={run_dir}"]


def run_train(run_dir, *overrides, timeout=300):
    result = subprocess.run(command(run_dir, *overrides, "progress=false"), cwd=REPO, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def read_events(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_ppo_hopper_run_writes_summary_config_and_tensorboard(tmp_path):
    run_dir = tmp_path / "hopper"
    run_train(run_dir, "algo=ppo", "env=Hopper-v4", "total_timesteps=4096", "algo.num_steps=2048",
              "eval_episodes=2")

    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["env"] == "Hopper-v4" and summary["algo"] == "ppo" and summary["seed"] == 1
    assert summary["total_timesteps"] == 4096
    assert summary["eval_episodes"] == 2
    assert summary["wall_seconds"] > 0 and summary["sps"] > 0
    assert math.isfinite(summary["eval_return_mean"]) and summary["eval_return_std"] >= 0

    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.env.id == "Hopper-v4" and config.algo.name == "ppo" and config.algo.num_steps == 2048

    events = read_events(run_dir)
    assert SCALAR_TAGS <= set(events.Tags()["scalars"])
    text_tags = [tag for tag in events.Tags()["tensors"] if tag.startswith("config")]
    assert text_tags, events.Tags()
    config_text = events.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    assert "Hopper-v4" in config_text and "num_steps: 2048" in config_text

    # Two iterations of 2048 steps, logged at global steps 2048 and 4096.
    policy_losses = events.Scalars("losses/policy_loss")
    assert [e.step for e in policy_losses] == [2048, 4096]
    # Linear annealing: iteration k of K runs at lr * (1 - (k - 1) / K).
    learning_rates = [e.value for e in events.Scalars("charts/learning_rate")]
    assert learning_rates == pytest.approx([3e-4, 1.5e-4], rel=1e-5)
    lengths = [e.value for e in events.Scalars("charts/episodic_length")]
    assert lengths and all(1 <= length <= 1000 and length == int(length) for length in lengths)
    assert events.Scalars("eval/return")[-1].value == pytest.approx(summary["eval_return_mean"], rel=1e-5)
    assert all(e.value > 0 for e in events.Scalars("charts/sps"))


def test_generic_env_runs_any_registered_id(tmp_path):
    run_dir = tmp_path / "acrobot"
    run_train(run_dir, "env=generic", "env.id=Acrobot-v1", "env.num_envs=2", "algo.num_steps=128",
              "total_timesteps=512", "eval_episodes=1")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"] == "Acrobot-v1"
    assert summary["total_timesteps"] == 512
    assert summary["eval_episodes"] == 1
    assert -500.0 <= summary["eval_return_mean"] <= 0.0  # Acrobot pays -1 a step for at most 500 steps
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").env.id == "Acrobot-v1"


def test_user_config_dir_adds_an_env_without_touching_the_package(tmp_path):
    user_configs = tmp_path / "my_configs" / "env"
    user_configs.mkdir(parents=True)
    (user_configs / "MyPole.yaml").write_text("defaults:\n  - common\n  - _self_\n\nid: CartPole-v1\nnum_envs: 2\n")
    run_dir = tmp_path / "mypole"
    result = subprocess.run([sys.executable, "-m", "rl.train", "--config-dir", str(tmp_path / "my_configs"),
                             "env=MyPole", "algo.num_steps=64", "total_timesteps=256", "eval_episodes=1",
                             "progress=false", f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.env.id == "CartPole-v1" and config.env.num_envs == 2
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] == 256


# (overrides, text the one error line must contain)
BAD_INPUTS = {
    "unknown_env_config": (["env=NoSuchEnv-v0"], ["env", "NoSuchEnv-v0"]),
    "unknown_generic_env_id": (["env=generic", "env.id=NoSuchEnv-v0"], ["env.id", "NoSuchEnv-v0"]),
    "unknown_algo": (["algo=nosuch"], ["algo", "nosuch"]),
    "zero_timesteps": (["total_timesteps=0"], ["total_timesteps"]),
    "negative_timesteps": (["total_timesteps=-5"], ["total_timesteps"]),
    "zero_envs": (["env.num_envs=0"], ["env.num_envs"]),
    "negative_learning_rate": (["algo.learning_rate=-1"], ["algo.learning_rate"]),
    "zero_clip": (["algo.clip_coef=0"], ["algo.clip_coef"]),
    # Without a GPU, asking for CUDA is the mistake; with one, an unknown device name is.
    "bad_device": ((["device=cuda"], ["device"]) if not torch.cuda.is_available() else
                   (["device=tpu"], ["device"])),
    "generic_without_id": (["env=generic"], ["env.id"]),
    "unknown_key": (["nosuchkey=1"], ["nosuchkey"]),
    "more_minibatches_than_samples": (["algo.num_minibatches=100000"], ["algo.num_minibatches"]),
    "discount_above_one": (["algo.gamma=1.5"], ["algo.gamma"]),
    "trpo_zero_max_kl": (["algo=trpo", "algo.max_kl=0"], ["algo.max_kl"]),
    "trpo_unknown_fvp": (["algo=trpo", "algo.fvp=magic"], ["algo.fvp"]),
    "resume_missing_run": (["resume=/nonexistent/rl-run"], ["resume", "/nonexistent/rl-run"]),
    "seed_too_large": (["seed=5000000000"], ["seed"]),
    "non_positive_observation_clip": (["env.clip_observations=0"], ["env.clip_observations"]),
    "unsupported_observation_space": (["env=generic", "env.id=Blackjack-v1"], ["env.id", "Blackjack-v1"]),
    "bad_env_kwargs": (["env=generic", "env.id=CartPole-v1", "+env.kwargs.nosuch=1"], ["env.kwargs"]),
    "npg_zero_damping": (["algo=npg", "algo.cg_damping=0"], ["algo.cg_damping"]),
    "one_sample_minibatches": (["algo.num_minibatches=256"], ["algo.num_minibatches"]),
    "non_boolean_flag": (["env.normalize_observations=maybe"], ["env.normalize_observations"]),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Start every bad-input run at once (each spends ~2 s starting Python), then wait for all."""
    root = tmp_path_factory.mktemp("bad")
    processes = {name: subprocess.Popen(command(root / name, *overrides), cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                 for name, (overrides, _) in BAD_INPUTS.items()}
    results = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=120)
            results[name] = (process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_naming_the_key(bad_runs, name, tmp_path_factory):
    returncode, stdout, stderr = bad_runs[name]
    run_dir = tmp_path_factory.getbasetemp() / "bad0" / name
    assert not run_dir.exists() or name == "resume_missing_run", "a refused run left a folder behind"
    assert returncode == 2, (stdout, stderr)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for text in BAD_INPUTS[name][1]:
        assert text in lines[0], lines[0]


def test_new_run_into_an_existing_run_folder_is_refused_without_touching_it(tmp_path):
    run_dir = tmp_path / "taken"
    run_train(run_dir, "total_timesteps=256", "eval_episodes=0")
    config_before = (run_dir / ".hydra" / "config.yaml").read_bytes()
    result = subprocess.run(command(run_dir, "total_timesteps=512", "seed=9"), cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == config_before
