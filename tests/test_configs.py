"""Every shipped config composes with Hydra and passes validation; env files name real gymnasium ids."""

from pathlib import Path

import gymnasium as gym
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rl.config import ConfigError, resolve, validate
from rl.envs import register_namespace

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
NOT_ENVS = {"common", "generic"}
FAMILIES = {"atari": "ALE/Pong-v5", "minatar": "MinAtar/Breakout-v1", "minigrid": "MiniGrid-DoorKey-5x5-v0"}  # defaults
ENV_NAMES = sorted(p.stem for p in (CONFIG_DIR / "env").glob("*.yaml") if p.stem not in NOT_ENVS)
ALGO_NAMES = sorted(p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml"))
TUNED_NAMES = sorted(p.stem for p in (CONFIG_DIR / "tuned").glob("*.yaml"))


def compose_config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def refusal(*overrides):
    """The one line `python -m rl.train` prints after "error: " when validation refuses these overrides
    (tests/test_cli.py shows such a refusal reaching the user end to end: that line, exit 2)."""
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as refused:
        resolve(cfg)
        validate(cfg)
    line = str(refused.value)
    assert "\n" not in line
    return line


def leaf_keys(node, prefix=""):
    keys = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_config_files_were_found():
    assert "CartPole-v1" in ENV_NAMES and "ppo" in ALGO_NAMES


@pytest.mark.parametrize("algo", ALGO_NAMES)
@pytest.mark.parametrize("env", ENV_NAMES)
def test_env_and_algo_configs_compose_and_validate(algo, env):
    cfg = compose_config(f"algo={algo}", f"env={env}")
    assert cfg.algo.name == algo
    assert cfg.env.id == FAMILIES.get(env, env)  # one file per gymnasium id, named after it, or per family
    assert validate(cfg) in ("cpu", "cuda")


@pytest.mark.parametrize("env", ENV_NAMES)
def test_env_configs_name_gymnasium_ids_and_only_common_keys(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT warnings into the working directory
    cfg = compose_config(f"env={env}")
    register_namespace(cfg.env.id)
    gym.spec(cfg.env.id)  # raises for an unregistered id
    common = OmegaConf.load(CONFIG_DIR / "env" / "common.yaml")
    assert set(cfg.env.keys()) == set(common.keys())  # a misspelt key would be a new one
    # The id really builds (the MuJoCo ones need the mujoco package).
    made = gym.make(cfg.env.id, **OmegaConf.to_container(cfg.env.kwargs))
    made.close()


def test_generic_env_config_takes_any_registered_id():
    cfg = compose_config("env=generic", "env.id=Acrobot-v1")
    assert validate(cfg) in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="env.id"):
        validate(compose_config("env=generic"))
    with pytest.raises(ConfigError, match="env.id"):
        validate(compose_config("env=generic", "env.id=NoSuchEnv-v0"))


@pytest.mark.parametrize("tuned", TUNED_NAMES)
def test_tuned_configs_override_existing_keys(tuned):
    algo, env = tuned.split("_", 1)
    assert algo in ALGO_NAMES and env in ENV_NAMES
    cfg = compose_config(f"algo={algo}", f"env={env}")
    assert validate(cfg) in ("cpu", "cuda")
    untuned = compose_config(f"algo={algo}", f"env={env}", "~tuned")
    values = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "tuned" / f"{tuned}.yaml"))
    for key in leaf_keys(values):
        assert OmegaConf.select(untuned, key, default="<absent>") != "<absent>", f"{tuned}.yaml sets unknown {key}"
        assert OmegaConf.select(cfg, key) == OmegaConf.select(OmegaConf.create(values), key), key


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_the_schema_names_exactly_the_keys_the_yaml_files_hold(algo):
    from rl.algos import ALGORITHMS
    from rl.config import ALGORITHM_NAMES, keys_of

    run = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"))
    yaml_keys = {k for k in run if k not in ("defaults", "hydra")}
    yaml_keys |= {f"algo.{k}" for k in OmegaConf.load(CONFIG_DIR / "algo" / f"{algo}.yaml")}
    yaml_keys |= {f"env.{k}" for k in OmegaConf.load(CONFIG_DIR / "env" / "common.yaml")}
    assert set(keys_of(algo)) == yaml_keys
    assert set(ALGORITHM_NAMES) == set(ALGORITHMS) == set(ALGO_NAMES)


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_a_run_saved_before_keys_existed_reads_them_as_it_behaved_then(algo):
    from rl import checkpoint
    from rl.config import KEYS_ADDED_LATER

    cfg = compose_config(f"algo={algo}", "env=CartPole-v1")
    OmegaConf.set_struct(cfg, False)
    for key in KEYS_ADDED_LATER:  # as an old checkpoint's config: none of the later keys
        parent, _, leaf = key.rpartition(".")
        OmegaConf.select(cfg, parent).pop(leaf, None)
    saved = checkpoint.config_of({"config": OmegaConf.to_yaml(cfg)})
    assert saved.algo.memory == "none" and saved.env.image_keys == [] and saved.env.preprocessing == "none"
    assert ("share_encoder" in saved.algo) == (algo == "ppo")  # only where the algorithm reads it
    assert validate(saved) in ("cpu", "cuda")
