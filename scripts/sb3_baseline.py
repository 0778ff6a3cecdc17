"""Stable-Baselines3 PPO / sb3-contrib TRPO with the RL Baselines3 Zoo recipe, evaluated as `rl` evaluates.

    pip install -e ".[bench]"
    python scripts/sb3_baseline.py --algo trpo --env Hopper-v4 --seed 1 --out runs/sb3/hopper_trpo_1 [key=value ...]

The "ours vs theirs" cells of the benchmark page (scripts/benchmark_returns.py runs this for `sb3-ppo` and
`sb3-trpo`). Recipes are the zoo's hyperparams/{ppo,trpo}.yml entries for these envs (PPO's MuJoCo ones are
the zoo's tuned `-v3` values); extra `key=value` arguments override the recipe's keyword arguments.
Evaluation matches `rl.train`: every `--eval-every-steps` and at the end, `--eval-episodes` episodes of the
deterministic policy on fresh envs seeded seed + 10000 + i, observations normalized with the training
statistics frozen, raw rewards. Writes <out>/summary.json (the keys of rl.train's) and <out>/curve.csv.

`--algo recurrent-ppo` is sb3-contrib's RecurrentPPO (MlpLstmPolicy, an LSTM of `lstm_hidden_size=64` units for
actor and critic each), for the memory issue's side-by-side cells; its recipe is the cell's overrides alone
(SB3's defaults otherwise), evaluation carries the LSTM state through each episode. `norm_obs=false` /
`norm_reward=false` turn VecNormalize's parts off where `rl`'s config does not normalize, and
`anneal_learning_rate=true` decays the learning rate linearly to 0 as `rl`'s does.

Beyond flat vectors, as `rl`'s family configs have them: a Dict observation takes SB3's MultiInputPolicy
(PointMaze: SB3's PPO defaults with 4 envs, vector keys normalized), and MiniGrid (`--wrapper
minigrid.wrappers:ImgObsWrapper`) a CnnPolicy whose features extractor is `rl`'s MiniGrid CNN (Nature-CNN
cannot take a 7x7 image) with configs/tuned/ppo_minigrid.yaml's hyperparameters.
"""

import argparse
import csv
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import yaml

EVAL_SEED_OFFSET = 10_000  # as rl.train
ZOO_MUJOCO_PPO = {  # RL Baselines3 Zoo, hyperparams/ppo.yml, tuned MuJoCo entries (named -v3 there)
    "Hopper": dict(n_envs=1, batch_size=32, n_steps=512, gamma=0.999, learning_rate=9.80828e-05,
                   ent_coef=0.00229519, clip_range=0.2, n_epochs=5, gae_lambda=0.99, max_grad_norm=0.7,
                   vf_coef=0.835671),
    "HalfCheetah": dict(n_envs=1, batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05,
                        ent_coef=0.000401762, clip_range=0.1, n_epochs=20, gae_lambda=0.92, max_grad_norm=0.8,
                        vf_coef=0.58096),
    "Walker2d": dict(n_envs=1, batch_size=32, n_steps=512, gamma=0.99, learning_rate=5.05041e-05,
                     ent_coef=0.000585045, clip_range=0.1, n_epochs=20, gae_lambda=0.95, max_grad_norm=1,
                     vf_coef=0.871923),
}
ZOO_PPO_POLICY = dict(log_std_init=-2, ortho_init=False, activation="relu", net_arch=[256, 256])
ZOO_MUJOCO_TRPO = dict(n_envs=2, batch_size=128, n_steps=1024, gamma=0.99, gae_lambda=0.95, sub_sampling_factor=1,
                       cg_max_steps=25, cg_damping=0.1, n_critic_updates=20, learning_rate=1e-3)


MINIGRID_PPO = dict(n_envs=8, n_steps=128, batch_size=256, n_epochs=4, learning_rate=1e-3, ent_coef=0.01,
                    gamma=0.99, gae_lambda=0.95, clip_range=0.2)  # as configs/tuned/ppo_minigrid.yaml


def recipe(algo, env_id):
    """(keyword arguments, policy settings) of the zoo recipe for this pair."""
    if algo == "recurrent-ppo":
        return {"n_envs": 1}, {"lstm_hidden_size": 64}
    if env_id.startswith("MiniGrid-") and algo == "ppo":
        return dict(MINIGRID_PPO), {"minigrid_cnn": True, "anneal_learning_rate": True}
    if env_id.startswith("PointMaze_"):
        return {"n_envs": 4}, {}  # SB3's PPO / TRPO defaults (2048-step rollouts), as rl's defaults are
    family = env_id.split("-")[0]
    if algo == "trpo":
        kwargs = dict(ZOO_MUJOCO_TRPO)
        if family == "HalfCheetah":
            kwargs["target_kl"] = 0.04
        if family == "Swimmer":
            kwargs["gamma"] = 0.9999
        return kwargs, {}
    if family in ZOO_MUJOCO_PPO:
        return dict(ZOO_MUJOCO_PPO[family]), dict(ZOO_PPO_POLICY)
    return {"n_envs": 1}, {}


def make_env(env_id, wrappers):
    return make_wrapped(gym.make(env_id), wrappers)


def minigrid_extractor():
    """A features extractor with rl's MiniGrid CNN (configs/env/minigrid.yaml): 2x2 convs of 16, 32, 64
    channels, stride 1, then 64 features; the same layer sizes and ReLUs as rl.networks.cnn builds."""
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class MiniGridCNN(BaseFeaturesExtractor):
        def __init__(self, observation_space, features_dim=64):
            super().__init__(observation_space, features_dim)
            channels = observation_space.shape[0]  # SB3 transposes images to CHW
            self.convs = torch.nn.Sequential(
                torch.nn.Conv2d(channels, 16, 2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 2), torch.nn.ReLU(),
                torch.nn.Conv2d(32, 64, 2), torch.nn.ReLU(), torch.nn.Flatten())
            with torch.no_grad():
                flat = self.convs(torch.zeros(1, *observation_space.shape)).shape[1]
            self.linear = torch.nn.Sequential(torch.nn.Linear(flat, features_dim), torch.nn.ReLU())

        def forward(self, obs):
            return self.linear(self.convs(obs))

    return MiniGridCNN


def evaluate(model, venv, env_id, episodes, seed, wrappers=()):
    """(returns, lengths) of `episodes` deterministic episodes."""
    returns, lengths = [], []
    for i in range(episodes):
        env = make_env(env_id, wrappers)
        obs, _ = env.reset(seed=seed + EVAL_SEED_OFFSET + i)
        total, length, done = 0.0, 0, False
        state, start = None, np.ones(1, dtype=bool)  # a recurrent policy's state (feed-forward ones ignore it)
        while not done:
            action, state = model.predict(venv.normalize_obs(obs), state=state, episode_start=start,
                                          deterministic=True)
            start = np.zeros(1, dtype=bool)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
        env.close()
        returns.append(total)
        lengths.append(length)
    return returns, lengths


def evaluation_columns(returns, lengths):
    return {"eval_return": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
            "eval_length": float(np.mean(lengths))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value: recipe keyword arguments to change")
    parser.add_argument("--algo", choices=["ppo", "trpo", "recurrent-ppo"], required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--total-timesteps", type=int, default=1_000_000)
    parser.add_argument("--eval-every-steps", type=int, default=40_960, help="as rl.train's eval_every=20 x 2048")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (rl.train's default is 1)")
    parser.add_argument("--wrapper", action="append", default=[], help="package.module:Wrapper for each env")
    args = parser.parse_intermixed_args()  # key=value overrides may come before and after options
    from rl.envs import load_wrapper, register_namespace

    register_namespace(args.env)
    wrappers = [load_wrapper(path) for path in args.wrapper]

    import torch
    from sb3_contrib import TRPO, RecurrentPPO
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(args.threads)
    kwargs, policy = recipe(args.algo, args.env)
    for override in args.overrides:
        key, _, value = override.partition("=")
        if key == "total_timesteps":  # the budget and the evaluation's size, spelt as rl.train spells them
            args.total_timesteps = int(value)
        elif key == "eval_episodes":
            args.eval_episodes = int(value)
        else:
            kwargs[key] = number_or_yaml(value)
    n_envs = kwargs.pop("n_envs")
    gamma = kwargs.get("gamma", 0.99)
    norm_obs, norm_reward = kwargs.pop("norm_obs", True), kwargs.pop("norm_reward", True)
    probe = make_env(args.env, wrappers)
    space = probe.observation_space
    probe.close()
    image = isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
    dict_space = isinstance(space, gym.spaces.Dict)
    venv = VecNormalize(make_vec_env(args.env, n_envs=n_envs, seed=args.seed,
                                     wrapper_class=(lambda env: make_wrapped(env, wrappers)) if wrappers else None),
                        gamma=gamma, norm_obs=norm_obs and not image, norm_reward=norm_reward and not image)
    policy_kwargs = {}
    policy_name = "MultiInputPolicy" if dict_space else "CnnPolicy" if image else "MlpPolicy"
    if args.algo == "recurrent-ppo":
        policy_name = policy_name.replace("Policy", "LstmPolicy")
        policy_kwargs = dict(policy)
    elif policy.get("minigrid_cnn"):
        policy_kwargs = dict(features_extractor_class=minigrid_extractor(), net_arch=dict(pi=[64], vf=[64]),
                             activation_fn=torch.nn.Tanh)
    elif policy:
        policy_kwargs = dict(log_std_init=policy["log_std_init"], ortho_init=policy["ortho_init"],
                             activation_fn=torch.nn.ReLU,
                             net_arch=dict(pi=policy["net_arch"], vf=policy["net_arch"]))
    cls = {"ppo": PPO, "trpo": TRPO, "recurrent-ppo": RecurrentPPO}[args.algo]
    schedule = {}
    if kwargs.pop("anneal_learning_rate", policy.get("anneal_learning_rate", False)):  # to 0, as rl's
        initial = kwargs["learning_rate"]
        schedule["learning_rate"] = lambda remaining: initial * remaining
    model = cls(policy_name, venv, seed=args.seed, device="cpu", policy_kwargs=policy_kwargs or None, verbose=0,
                tensorboard_log=str(args.out / "tensorboard"), **{**kwargs, **schedule})

    args.out.mkdir(parents=True, exist_ok=True)
    rows, recent = [], []

    class Record(BaseCallback):
        """Per rollout: the mean return of the episodes that ended in it; evaluations on schedule."""

        def __init__(self):
            super().__init__()
            self.finished, self.finished_lengths, self.next_eval = [], [], args.eval_every_steps

        def _on_step(self):
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.finished.append(info["episode"]["r"])
                    self.finished_lengths.append(info["episode"]["l"])
            return True

        def _on_rollout_end(self):
            step = self.num_timesteps
            row = {"step": step, "train_return": np.mean(self.finished) if self.finished else "",
                   "eval_return": "", "eval_return_std": "",
                   "train_length": np.mean(self.finished_lengths) if self.finished_lengths else "",
                   "eval_length": ""}
            recent.extend(self.finished)
            self.finished, self.finished_lengths = [], []
            if step >= self.next_eval or step >= args.total_timesteps:
                self.next_eval += args.eval_every_steps
                row.update(evaluation_columns(*evaluate(self.model, venv, args.env, args.eval_episodes, args.seed,
                                                        wrappers)))
            rows.append(row)

    start = time.perf_counter()
    model.learn(total_timesteps=args.total_timesteps, callback=Record())
    wall = time.perf_counter() - start
    if not rows or rows[-1]["eval_return"] == "":  # the last rollout was not evaluated yet
        rows.append({"step": model.num_timesteps, "train_return": "", "train_length": "",
                     **evaluation_columns(*evaluate(model, venv, args.env, args.eval_episodes, args.seed, wrappers))})
    final = rows[-1]
    best = max((row for row in rows if row["eval_return"] != ""), key=lambda row: row["eval_return"])
    with open(args.out / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train_return", "eval_return", "eval_return_std",
                                               "train_length", "eval_length"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "env": args.env, "algo": f"sb3-{args.algo}", "seed": args.seed, "total_timesteps": model.num_timesteps,
        "wall_seconds": wall, "sps": model.num_timesteps / wall,
        "eval_return_mean": final["eval_return"], "eval_return_std": final["eval_return_std"],
        "eval_episodes": args.eval_episodes, "best_eval_return_mean": best["eval_return"], "best_eval_step": best["step"],
        "train_return_mean_last100": float(np.mean(recent[-100:])) if recent else None,
        "recipe": {**kwargs, "n_envs": n_envs, "policy": policy, "policy_class": policy_name,
                   "wrappers": args.wrapper},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done: {summary['total_timesteps']} steps in {wall:.0f}s, eval return {final['eval_return']:.1f}")


def number_or_yaml(text):
    """A value as YAML reads it, except that `1e-3` is a number (YAML 1.1 wants `1.0e-3`), as in rl.train."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return yaml.safe_load(text)


def make_wrapped(env, wrappers):
    for wrapper in wrappers:
        env = wrapper(env)
    return env


if __name__ == "__main__":
    main()
