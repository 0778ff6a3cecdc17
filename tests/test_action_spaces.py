"""MultiDiscrete and MultiBinary actions end to end: PPO, TRPO and NPG learn the toy bandits of
tests/toy_envs.py, rl.evaluate and rl.load agree with the run, the policy exports, and what rl cannot act in
is refused in one line. (The heads' math is in test_distributions.py, their FVPs in test_fvp.py.)"""

from pathlib import Path

import numpy as np
import pytest

import rl
from rl import results
from rl.export import main as export_main
from tests.test_configs import refusal

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # six training runs; the full suite (README, CI) runs them
ENVS = {"tests.toy_envs:MatchDigits-v0": (3.0, 1.083), "tests.toy_envs:MatchBits-v0": (5.0, 2.5)}  # (best, random)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("spaces")
    jobs = {}
    for env_id in ENVS:
        for algo in ("ppo", "trpo", "npg"):
            run_dir = root / f"{env_id.split(':')[1]}-{algo}"
            results.train(run_dir, f"algo={algo}", "env=generic", f"env.id={env_id}", "total_timesteps=8192",
                          "eval_episodes=20", cwd=REPO, timeout=1200)
            jobs[(env_id, algo)] = run_dir
    return jobs


@pytest.mark.parametrize("env_id", sorted(ENVS))
@pytest.mark.parametrize("algo", ["ppo", "trpo", "npg"])
def test_every_algorithm_learns_the_bandit_far_beyond_chance(runs, env_id, algo):
    best, chance = ENVS[env_id]
    summary = results.summary(runs[(env_id, algo)])
    assert summary["eval_return_mean"] >= chance + 0.8 * (best - chance), summary


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_the_loaded_policy_acts_in_the_space_and_replays_the_final_evaluation(runs, env_id):
    import gymnasium as gym

    import tests.toy_envs  # noqa: F401  (registers the envs)

    run_dir = runs[(env_id, "ppo")]
    policy = rl.load(run_dir)
    summary = results.summary(run_dir)
    returns = []
    for episode in range(summary["eval_episodes"]):  # training's evaluation seeds
        env = gym.make(env_id.split(":")[1])
        obs, _ = env.reset(seed=summary["seed"] + 10_000 + episode)
        action = policy.act(obs)
        assert env.action_space.contains(np.asarray(action, dtype=env.action_space.dtype)), action
        returns.append(env.step(action)[1])
    assert np.mean(returns) == summary["eval_return_mean"]


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_the_policy_exports_and_its_check_passes(runs, env_id, capsys):
    # Exit 0 means the file ran and matched rl.load().act() on 1,000 observations (every action equal here).
    for options in ([], ["deterministic=false"], ["format=torchscript"]):
        assert export_main([str(runs[(env_id, "trpo")]), *options]) == 0, capsys.readouterr().err
        assert "checked on 1000 observations from the env" in capsys.readouterr().out


def test_actions_rl_cannot_take_are_refused_in_one_line():
    line = refusal("env=generic", "env.id=tests.toy_envs:MatchDigits-v0", "+env.kwargs.start=1")
    assert "env.id" in line and "MultiDiscrete" in line and "starting at 0" in line
