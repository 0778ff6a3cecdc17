"""Dict, image and masked observations end to end, in real `python -m rl.train` processes: masks learned
with and never broken (tests/toy_envs.py's PickValid), TRPO on a Dict with a mask and on MinAtar's images,
reproducibility and exact resume on both, rl.load and rl.export on them, Atari's preprocessing on a few
games of frames. (Packing and encoders: test_observations.py; their FVPs: test_fvp.py.)"""

import json

import numpy as np
import pytest

import rl
from rl import results
from rl.envs import make_vector_env
from rl.export import main as export_main
from tests.reproducibility.runs import assert_same_run, run_all
from tests.test_configs import refusal

pytestmark = pytest.mark.slow  # a dozen short training runs; the full suite (README, CI) runs them

PICK = ["env=generic", "env.id=tests.toy_envs:PickValid-v0", "eval_episodes=200"]
STRICT = ["+env.kwargs.strict=true"]  # an invalid action is an error: the run would fail
MINATAR = ["algo=trpo", "env=minatar", "env.num_envs=4", "algo.num_steps=128", "total_timesteps=2048",
           "eval_episodes=2", "eval_every=2", "checkpoint_every=1"]
MASKED_BUDGET = 4096  # PPO's iterations here are 8 envs x 128 steps: 4 updates


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("observations")
    pick_ppo = ["algo=ppo", *PICK, f"total_timesteps={MASKED_BUDGET}", "checkpoint_every=1", "seed=1"]
    jobs = {
        "masked": pick_ppo + STRICT,
        "unmasked": pick_ppo + ["env.action_mask=none"],
        "info_masked": ["algo=ppo", "env=generic", "env.id=tests.toy_envs:PickValidInfo-v0", "env.action_mask=info",
                        "eval_episodes=200", f"total_timesteps={MASKED_BUDGET}", "seed=1", *STRICT],
        "masked_async": pick_ppo + STRICT + ["env.vectorization=async"],
        "masked_stopped": pick_ppo + STRICT + [f"stop_after_steps={MASKED_BUDGET // 2}"],
        "trpo_masked": ["algo=trpo", *PICK, "total_timesteps=8192", "seed=2", *STRICT],
        "trpo_masked_again": ["algo=trpo", *PICK, "total_timesteps=8192", "seed=2", *STRICT],
        "minatar": MINATAR + ["seed=3"],
        "minatar_again": MINATAR + ["seed=3"],
        "minatar_stopped": MINATAR + ["seed=3", "stop_after_steps=1024"],
        "minatar_shared": ["algo=ppo", "env=minatar", "algo.share_encoder=true", "env.num_envs=4",
                           "algo.num_steps=128", "total_timesteps=2048", "eval_episodes=2", "seed=5"],
        "minatar_shared_again": ["algo=ppo", "env=minatar", "algo.share_encoder=true", "env.num_envs=4",
                                 "algo.num_steps=128", "total_timesteps=2048", "eval_episodes=2", "seed=5"],
        "atari": ["algo=ppo", "env=atari", "env.id=ALE/Pong-v5", "env.num_envs=2", "algo.num_steps=32",
                  "algo.num_minibatches=2", "total_timesteps=128", "eval_episodes=0", "seed=4"],
    }
    dirs = {name: root / name for name in jobs}
    for name, (rc, _, err) in run_all({name: (dirs[name], overrides) for name, overrides in jobs.items()}).items():
        assert rc == 0, (name, err[-2000:])
    resumes = {f"{name}_resumed": (dirs[f"{name}_stopped"], [f"resume={dirs[f'{name}_stopped']}"])
               for name in ("masked", "minatar")}
    for name, (rc, _, err) in run_all(resumes).items():
        assert rc == 0, (name, err[-2000:])
    return dirs


def test_a_masked_policy_never_takes_an_invalid_action_and_learns_faster(runs):
    # The masked runs trained and evaluated on the strict env (any invalid action would have failed them).
    masked, unmasked = (results.summary(runs[name])["eval_return_mean"] for name in ("masked", "unmasked"))
    assert masked >= 0.97  # the higher valid action nearly always
    assert unmasked <= masked - 0.15, (masked, unmasked)  # the same budget, still choosing among sixteen
    assert results.summary(runs["info_masked"])["eval_return_mean"] >= 0.97  # the mask read from info


def test_trpo_on_a_masked_dict_learns_and_is_bit_identical(runs):
    assert results.summary(runs["trpo_masked"])["eval_return_mean"] >= 0.9
    assert_same_run(runs["trpo_masked"], runs["trpo_masked_again"])


def test_masked_dict_runs_resume_exactly_and_async_equals_sync(runs):
    assert_same_run(runs["masked"], runs["masked_stopped"])  # resumed into the stopped run's folder
    assert_same_run(runs["masked"], runs["masked_async"])


def test_minatar_images_train_reproducibly_and_resume_from_their_checkpoint(runs):
    assert results.summary(runs["minatar"])["total_timesteps"] == 2048
    assert_same_run(runs["minatar"], runs["minatar_again"])
    # MinAtar's game state is not saved (as MuJoCo's is not): a resume restarts the episodes, so the run is
    # the uninterrupted one up to the stop, then goes on to the same budget.
    whole, resumed = results.scalars(runs["minatar"]), results.scalars(runs["minatar_stopped"])
    assert whole.keys() == resumed.keys()
    for tag in ("losses/value_loss", "trpo/kl", "charts/episodic_return"):
        assert [v for v in resumed[tag] if v[0] <= 1024] == [v for v in whole[tag] if v[0] <= 1024], tag
        assert resumed[tag][-1][0] == whole[tag][-1][0] == 2048, tag


def test_ppo_with_a_shared_encoder_trains_reproducibly_and_exports(runs, capsys):
    assert_same_run(runs["minatar_shared"], runs["minatar_shared_again"])
    policy = rl.load(runs["minatar_shared"])
    assert policy.agent.actor.net[0] is policy.agent.critic.net[0]  # still one module after loading
    assert export_main([str(runs["minatar_shared"])]) == 0, capsys.readouterr().err


def test_the_loaded_masked_policy_acts_on_dict_observations_and_info_masks(runs):
    import gymnasium as gym

    import tests.toy_envs  # noqa: F401  (registers the envs)

    policy = rl.load(runs["masked"])
    env = gym.make("PickValid-v0", strict=True)
    obs, _ = env.reset(seed=5)
    batch = {"higher": [], "action_mask": []}
    for _ in range(50):
        action = policy.act(obs, deterministic=False)  # one dict
        assert obs["action_mask"][action] == 1
        for key in batch:
            batch[key].append(obs[key])
        obs = env.step(action)[0]
    actions = policy.act({key: np.stack(values) for key, values in batch.items()})  # a batch of dicts
    assert actions.shape == (50,) and (np.stack(batch["action_mask"])[np.arange(50), actions] == 1).all()

    info_policy = rl.load(runs["info_masked"])
    mask = np.zeros(16, np.int8)
    mask[[3, 11]] = 1
    assert info_policy.act(np.array([1.0], np.float32), action_mask=mask) == 11  # the higher one
    assert info_policy.act(np.array([0.0], np.float32), action_mask=mask) == 3


@pytest.mark.parametrize("name", ["masked", "info_masked", "minatar"])  # (Atari's CNN: as MinAtar's, larger)
def test_dict_image_and_masked_policies_export_and_pass_their_check(runs, name, capsys):
    for options in ([], ["deterministic=false"]):
        assert export_main([str(runs[name]), *options]) == 0, capsys.readouterr().err
        assert "checked on 1000 observations from the env" in capsys.readouterr().out


def test_atari_trains_on_stacked_frames_and_the_policy_acts_on_them(runs):
    policy = rl.load(runs["atari"])
    assert policy.observation_space.shape == (4, 84, 84) and policy.agent.layout.of_kind("image")
    frames = np.zeros((4, 84, 84), np.uint8)
    assert 0 <= int(policy.act(frames)) < 6  # Pong's six actions


def test_an_atari_evaluation_plays_a_whole_game_and_films_its_raw_frames(runs):
    from moviepy import VideoFileClip

    from rl.evaluate import main as evaluate_main

    assert evaluate_main([str(runs["atari"]), "episodes=1", "video=true"]) == 0
    record = json.loads((runs["atari"] / "eval.json").read_text())
    assert record["returns"][0] <= -1 and record["lengths"][0] > 100  # a lost game of Pong: 21 points to 0-20
    with VideoFileClip(record["videos"][0]) as clip:
        assert clip.size == [160, 210]  # the game's own RGB frames, not the 84x84 grayscale the policy sees
        assert clip.duration * clip.fps >= record["lengths"][0]


def play_a_game(training, backend, seed=0):
    """One game of Breakout with random actions through the Atari preprocessing: (episode ends, rewards
    seen, the game's reported (score, frames))."""
    envs = make_vector_env("ALE/Breakout-v5", 1, preprocessing="atari", training=training, backend=backend,
                           frameskip=1, repeat_action_probability=0.0)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8
    ends, rewards = 0, []
    while True:
        obs, reward, terminated, truncated, info = envs.step(rng.integers(4, size=1))
        rewards.append(float(reward[0]))
        ends += int(terminated[0] or truncated[0])
        final = info.get("final_info", {})
        if "episode" in final and final["_episode"][0]:
            envs.close()
            return ends, rewards, (float(final["episode"]["r"][0]), int(final["episode"]["l"][0]))


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])  # EnvPool's own preprocessing, set to match
def test_atari_training_ends_episodes_at_lost_lives_and_reports_whole_games(backend):
    ends, rewards, (score, frames) = play_a_game(training=True, backend=backend)
    assert ends == 5  # Breakout's five lives, each an episode for learning, one game reported
    assert set(rewards) <= {0.0, 1.0} and score >= sum(rewards)  # clipped rewards; the raw score
    assert frames >= 4 * len(rewards)  # frames of the raw game (4 a step, and no-ops at resets)
    eval_ends, eval_rewards, (eval_score, _) = play_a_game(training=False, backend=backend)
    assert eval_ends == 1 and eval_score == sum(eval_rewards)  # evaluation: whole games, raw rewards


def test_unusable_observations_are_refused_in_one_line():
    line = refusal("env=minigrid", "env.wrappers=[]")  # MiniGrid's Dict with its mission string
    assert "env.id" in line and "'mission' is a MissionSpace space" in line and "ImgObsWrapper" in line
    line = refusal("env=minatar", "env.cnn_kernels=[12]")  # 10x10 frames
    assert "env.cnn_kernels" in line and "too small for these kernels" in line
    line = refusal("env=generic", "env.id=tests.toy_envs:PickValid-v0", "env.image_keys=[pixels]")
    assert "env.image_keys" in line and "not keys of the observation" in line
    line = refusal("env=generic", "env.id=tests.toy_envs:PickValidInfo-v0", "env.action_mask=observation")
    assert "env.action_mask" in line and "has no 'action_mask' key" in line


def test_a_family_without_its_package_says_what_to_install(monkeypatch):
    import sys

    import gymnasium as gym

    from rl.envs import check_env_id

    monkeypatch.setitem(sys.modules, "minatar.gym", None)  # as if minatar were not installed
    monkeypatch.delitem(gym.registry, "MinAtar/Freeway-v1", raising=False)
    with pytest.raises(ValueError, match=r'needs the minatar package: pip install -e "\.\[minatar\]"'):
        check_env_id("MinAtar/Freeway-v1")


def test_the_loaded_policy_makes_the_env_it_acts_in_wrapped_as_evaluation_wraps_it(runs):
    from rl.envs import make_vector_env

    policy = rl.load(runs["atari"])
    env = policy.make_env()
    try:
        obs, _ = env.reset(seed=7)
        assert obs.shape == policy.observation_space.shape == (4, 84, 84)
        for _ in range(5):
            obs = env.step(policy.act(obs))[0]
    finally:
        env.close()
    config = policy.config.env
    evaluation = make_vector_env(config.id, 1, preprocessing="atari", training=False, **config.kwargs)
    env = policy.make_env()
    try:  # the same first frames as the evaluator's env for the same seed
        assert np.array_equal(evaluation.reset(seed=7)[0][0], env.reset(seed=7)[0])
    finally:
        evaluation.close()
        env.close()
