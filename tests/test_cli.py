"""`python -m rl.train` end to end: run folder contents, TensorBoard tags, and one-line errors for bad input."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rl import results
from tests.reproducibility.runs import folder_digest, run_all
from tests.test_configs import refusal

REPO = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {"env", "algo", "seed", "total_timesteps", "wall_seconds", "sps", "eval_return_mean",
                "eval_return_std", "eval_episodes"}
SCALAR_TAGS = {"charts/episodic_return", "charts/episodic_length", "charts/sps", "charts/learning_rate",
               "losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
               "losses/clipfrac", "losses/explained_variance", "time/rollout_seconds", "time/update_seconds",
               "eval/return"}


HANG = 1200  # only a hang trips this, even on a loaded machine


def run_train(run_dir, *overrides, cwd=REPO):
    result = results.train(run_dir, *overrides, cwd=cwd, timeout=HANG)
    assert "Traceback" not in result.stderr
    return result


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

    events = results.events(run_dir)
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_user_config_dir_adds_an_env_without_touching_the_package(tmp_path):
    user_configs = tmp_path / "my_configs" / "env"
    user_configs.mkdir(parents=True)
    (user_configs / "MyPole.yaml").write_text("defaults:\n  - common\n  - _self_\n\nid: CartPole-v1\nnum_envs: 2\n")
    run_dir = tmp_path / "mypole"
    run_train(run_dir, "--config-dir", str(tmp_path / "my_configs"), "env=MyPole", "algo.num_steps=64",
              "total_timesteps=256", "eval_episodes=1")
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
    "added_unknown_algo_key": (["+algo.lr=1e-3"], ["algo.lr", "unknown key"]),
    "added_unknown_top_level_key": (["+nosuchkey=1"], ["nosuchkey", "unknown key"]),
    "key_of_another_algorithm": (["algo=trpo", "+algo.clip_coef=0.1"], ["algo.clip_coef", "unknown key"]),
    "negative_eval_every": (["eval_every=-1"], ["eval_every"]),
    "unknown_step_curvature": (["algo=trpo", "algo.step_curvature=sideways"], ["algo.step_curvature"]),
    "env_module_that_does_not_import": (["env=generic", "env.id=no_such_module:Maze-v0"],
                                        ["env.id", "no_such_module"]),
    "unparsable_override": (["algo.learning_rate=[1,2"], ["algo.learning_rate=[1,2: not a valid value"]),
}
# An env whose package is missing must name the env and the install command, not env.kwargs (Box2D is
# hidden below where it is installed).
BAD_INPUTS["env_package_not_installed"] = (["env=generic", "env.id=LunarLander-v3"],
                                           ["env.id", "LunarLander-v3", "pip install"])


# Run as real processes: one case for each way a refusal reaches the user (Hydra composition, an override of
# a missing key, a resume folder checked before Hydra, validation, an added key, the device, an env that
# cannot be made). The other cases take the validation path, checked in-process below: a process each would
# add ~5 s of imports and prove nothing more.
END_TO_END = ("unknown_env_config", "unknown_algo", "unknown_key", "resume_missing_run", "negative_learning_rate",
              "non_boolean_flag", "added_unknown_top_level_key", "bad_device", "unknown_generic_env_id",
              "unparsable_override")


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """The end-to-end bad-input runs, two at a time (a loaded 2-core machine must not time out), each unhurried."""
    root = tmp_path_factory.mktemp("bad")
    return run_all({name: (root / name, BAD_INPUTS[name][0]) for name in END_TO_END})


@pytest.mark.parametrize("name", END_TO_END)
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


@pytest.mark.parametrize("name", [name for name in BAD_INPUTS if name not in END_TO_END])
def test_bad_value_is_refused_by_validation_in_one_line_naming_the_key(name, monkeypatch):
    if name == "env_package_not_installed":
        monkeypatch.setitem(sys.modules, "Box2D", None)  # `import Box2D` raises ImportError
        for module in [m for m in sys.modules if m.startswith("gymnasium.envs.box2d")]:
            monkeypatch.delitem(sys.modules, module)
    line = refusal(*BAD_INPUTS[name][0])
    for text in BAD_INPUTS[name][1]:
        assert text in line, line


@pytest.fixture(scope="module")
def trpo_hopper(tmp_path_factory):
    """One short TRPO Hopper run with evaluation, read by the tests below: (run folder, its result)."""
    run_dir = tmp_path_factory.mktemp("cli") / "banner"
    result = run_train(run_dir, "algo=trpo", "env=Hopper-v4", "total_timesteps=5000", "eval_every=1",
                       "eval_episodes=1")
    return run_dir, result


def test_new_run_into_an_existing_run_folder_is_refused_without_touching_it(trpo_hopper, tmp_path):
    run_dir = tmp_path / "taken"
    shutil.copytree(trpo_hopper[0], run_dir)
    before = folder_digest(run_dir)
    result = results.train(run_dir, "total_timesteps=512", "seed=9", cwd=REPO, timeout=HANG, check=False)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert folder_digest(run_dir) == before


def test_start_banner_says_where_what_and_how_long_and_warnings_are_not_repeated(trpo_hopper):
    run_dir, result = trpo_hopper
    out = result.stdout
    assert f"run folder   {run_dir.resolve()}" in out
    assert "training     trpo on Hopper-v4 (gymnasium " in out
    assert "device       cpu (device=auto: no CUDA GPU here)" in out or "device       cuda" in out
    assert "batch        2 envs x 1024 steps = 2048 steps per iteration" in out
    assert "budget       2 iterations = 4096 steps (total_timesteps=5000 rounded down to whole iterations)" in out
    assert f"tensorboard  tensorboard --logdir {run_dir.resolve()}" in out
    assert out.count("has a newer version, v5") == 1
    assert "out of date" not in result.stderr and "\x1b[" not in result.stdout + result.stderr
    assert re.search(r"eval return -?\d+\.\d \+/- \d+\.\d at step 2048\n", out)
    assert re.search(r"done: 4096 steps in \d+\.\ds \(\d+ sps\), eval return -?\d+\.\d \+/- \d+\.\d over 1 episodes", out)


def hparams_of(run_dir):
    """(experiment column names and types, this session's values) from a run's HParams summaries."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    columns, values = {}, {}
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag.startswith("_hparams_"):
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("experiment"):
                        columns = {h.name: h.type for h in data.experiment.hparam_infos}
                    if data.HasField("session_start_info"):
                        values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                                  for k, v in data.session_start_info.hparams.items()}
    return columns, values


def test_hparams_share_every_algorithms_columns_and_show_booleans_as_words(trpo_hopper):
    from tensorboard.plugins.hparams import api_pb2

    run_dir = trpo_hopper[0]
    columns, values = hparams_of(run_dir)
    assert {"algo.clip_coef", "algo.update_epochs", "algo.max_kl", "algo.step_size", "env.num_envs", "seed"} <= set(columns)
    assert columns["algo.normalize_advantages"] == api_pb2.DATA_TYPE_STRING
    assert values["algo.normalize_advantages"] == "true" and values["algo.max_kl"] == pytest.approx(0.01)
    assert "algo.clip_coef" not in values and values["device"] == "cpu"
    assert not (run_dir / "tensorboard").exists()  # event files sit in the run folder: runs are named by it


@pytest.mark.slow
def test_resume_accepts_the_repeated_command_line_and_names_what_would_change(tmp_path):
    run_dir = tmp_path / "again"
    original = ["algo=ppo", "env=CartPole-v1", "seed=5", "algo.clip_coef=0.3", "total_timesteps=1024"]
    run_train(run_dir, *original, "stop_after_steps=512", "eval_episodes=0")
    changed = results.train(None, *original[:3], "algo.clip_coef=0.25", f"resume={run_dir}", cwd=REPO,
                            timeout=HANG, check=False)
    assert changed.returncode == 2 and "algo.clip_coef" in changed.stderr and "0.3" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    run_train(None, *original, "eval_episodes=0", f"resume={run_dir}")
    assert json.loads((run_dir / "summary.json").read_text())["total_timesteps"] == 1024


MAZE_MODULE = '''
import gymnasium as gym
import numpy as np


class Maze(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), float(action), False, False, {}


gym.register("Maze-v0", entry_point=Maze, max_episode_steps=20)
'''


@pytest.mark.slow
@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_users_own_env_module_trains_from_the_current_directory(tmp_path, vectorization):
    (tmp_path / "my_envs.py").write_text(MAZE_MODULE)
    run_dir = tmp_path / "maze"
    run_train(run_dir, "env=generic", "env.id=my_envs:Maze-v0", "env.num_envs=2", f"env.vectorization={vectorization}",
              "algo.num_steps=64", "total_timesteps=256", "eval_episodes=2", cwd=tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"] == "my_envs:Maze-v0" and summary["eval_return_mean"] <= 20.0  # reward <= 1 a step


def test_a_folder_named_rl_in_the_current_directory_does_not_shadow_the_package(tmp_path):
    (tmp_path / "rl" / "configs").mkdir(parents=True)  # e.g. the clone itself, seen from its parent folder
    result = subprocess.run([sys.executable, "-c", "import rl; print(rl.load.__module__)"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=HANG)
    assert result.returncode == 0 and result.stdout.strip() == "rl", result.stderr


LOAD_WITHOUT_THE_ENV = '''
import sys
import numpy as np
import rl
from rl.checkpoint import DEFAULT_MAX_BYTES, size_bound
from rl.trained import checkpoint_size_limit

run_dir = sys.argv[1]
policy = rl.load(run_dir)
bound = checkpoint_size_limit(run_dir)
weights = sum(t.numel() for t in policy.agent.state_dict().values())
assert bound == size_bound(weights) < DEFAULT_MAX_BYTES, (bound, weights)
# The same network, read independently of the policy: the argmax of its logits on raw observations
# (this run does not normalize them).
obs = np.array([[0.5, -0.25], [-1.0, 1.0]], dtype=np.float32)
import torch
logits = policy.agent.actor.net(torch.from_numpy(obs))
assert (policy.act(obs) == logits.argmax(-1).numpy()).all()
assert policy.act(obs[0]) == int(logits[0].argmax())
print("loaded", policy.observation_space, policy.action_space)
'''


@pytest.mark.slow
def test_a_run_whose_env_module_is_gone_still_loads_and_is_bounded_and_only_evaluating_it_refuses(tmp_path):
    (tmp_path / "my_envs.py").write_text(MAZE_MODULE)
    run_dir = tmp_path / "maze"
    run_train(run_dir, "env=generic", "env.id=my_envs:Maze-v0", "algo.num_steps=64", "total_timesteps=128",
              "eval_episodes=0", cwd=tmp_path)
    (tmp_path / "my_envs.py").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_THE_ENV, str(run_dir)], cwd=elsewhere,
                            capture_output=True, text=True, timeout=HANG)
    assert loaded.returncode == 0 and "loaded Box(-1.0, 1.0, (2,), float32) Discrete(2)" in loaded.stdout, \
        loaded.stderr[-2000:]
    evaluated = subprocess.run([sys.executable, "-m", "rl.evaluate", str(run_dir)], cwd=elsewhere,
                               capture_output=True, text=True, timeout=HANG)
    lines = [line for line in evaluated.stderr.splitlines() if line.strip()]
    assert evaluated.returncode == 2 and len(lines) == 1 and "my_envs:Maze-v0" in lines[0], evaluated.stderr
