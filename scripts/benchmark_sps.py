"""Training throughput, ours vs Stable-Baselines3 / sb3-contrib, with matched settings, one after another.

    pip install -e ".[bench,envpool]"   # stable-baselines3, sb3-contrib, EnvPool
    python scripts/benchmark_sps.py --envs Hopper-v4 CartPole-v1 --num-envs 1 8 --steps 50000 --env-only \\
        --backends gymnasium envpool --compile both --json benchmarks/speed/sps.json

`--backends` and `--compile {eager,compiled,both}` (PPO's algo.compile) multiply our rows
(rl-ppo[envpool,compiled], ...);
SB3 always steps gymnasium's envs (DummyVecEnv). Env-only limits are measured for every backend, and each
of our rows is compared with the limit of its own backend. Our SPS is the whole run's (`summary.json`:
set-up, the compile warm-up and the final checkpoint included); "steady SPS" leaves out the first
iteration (where torch.compile compiles) by reading the run's per-iteration rollout and update times.

Each measurement runs in its own process. Settings come from our composed config for the (algo, env) pair
(`configs/`), and the anchors are built with the same values: env, num_envs (sync vector envs: DummyVecEnv
for SB3), torch CPU threads, rollout length, epochs and
minibatches (PPO) or CG iterations, damping, max KL, line search and critic updates (TRPO), 64x64 tanh
actor and critic, observation/reward normalization (VecNormalize) where our config normalizes, device.
`--env-only` adds the limit: the same sync vector env stepped with random actions, no learning. Our wall
time is the run's (`summary.json`: set-up and the final checkpoint included, evaluation off); SB3's is
`learn()` alone.

An env of a family config is named `<family>:<id>`, e.g. `--envs atari:ALE/Pong-v5` (configs/env/atari.yaml
and configs/tuned/ppo_atari.yaml; EnvPool's Atari with `--backends envpool`). SB3's side is then its own Atari
stack (make_atari_env: AtariWrapper, VecFrameStack 4) with CnnPolicy, the same hyperparameters, and its
default of one CNN shared by actor and critic (as the shipped Atari recipe's algo.share_encoder=true; with
`--ours algo.share_encoder=false` ours are separate: twice the CNN work per update).

Memory: our PPO rows with `--ours algo.memory=lstm` (or gru) are compared with `sb3-recurrent-ppo`,
sb3-contrib's RecurrentPPO (MlpLstmPolicy, lstm_hidden_size = our memory_size). `--overrides` sets keys for
both sides (the anchors are built from the composed config), e.g. a recipe's rollout and minibatch sizes:

    python scripts/benchmark_sps.py --envs generic:tests.toy_envs:PositionOnlyCartPole-v0 --num-envs 8 \
        --frameworks rl-ppo sb3-recurrent-ppo --ours algo.memory=lstm --overrides algo.num_steps=32 ...
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rl import results

REPO = Path(__file__).resolve().parent.parent
FRAMEWORKS = {  # name -> (algo, anchor it is compared with)
    "rl-ppo": ("ppo", "sb3-ppo"),
    "rl-trpo": ("trpo", "sb3-trpo"),
    "sb3-ppo": ("ppo", None),
    "sb3-trpo": ("trpo", None),
    "sb3-recurrent-ppo": ("ppo", None),  # the anchor of our PPO rows with algo.memory=gru|lstm (--ours)
}


def env_overrides(env_spec):
    """`env=...` overrides for an env spec: a config named after its id, or `<family>:<id>` (a family config)."""
    family, _, env_id = env_spec.partition(":")
    if env_id and (REPO / "configs" / "env" / f"{family}.yaml").exists():
        return [f"env={family}", f"env.id={env_id}"]
    return [f"env={env_spec}"]


def composed_config(algo, env_spec, num_envs, steps, overrides=()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose("config", overrides=[f"algo={algo}", *env_overrides(env_spec), f"env.num_envs={num_envs}",
                                            f"total_timesteps={steps}", *overrides])


def run_ours(algo, env_id, num_envs, steps, device, threads, backend="gymnasium", compile=False, extra=()):
    with tempfile.TemporaryDirectory() as run_dir:
        results.train(run_dir, f"algo={algo}", *env_overrides(env_id), f"env.num_envs={num_envs}",
                      f"total_timesteps={steps}", f"device={device}", f"torch_threads={threads}",
                      f"env.backend={backend}", *([f"algo.compile={str(compile).lower()}"] if algo == "ppo" else []),
                      "env.vectorization=sync", "eval_episodes=0", "checkpoint_every=0", *extra, cwd=REPO)
        summary = results.summary(run_dir)
        rollout, update = results.values(run_dir, "time/rollout_seconds", "time/update_seconds")
    per_iteration = summary["total_timesteps"] / len(rollout)
    if len(rollout) < 2:
        return summary["total_timesteps"], summary["wall_seconds"], None
    # Steady state: every iteration but the first (which compiles, with algo.compile=true).
    steady = {"sps": per_iteration * (len(rollout) - 1) / (sum(rollout[1:]) + sum(update[1:])),
              "rollout_us_per_step": 1e6 * sum(rollout[1:]) / (per_iteration * (len(rollout) - 1)),
              "update_us_per_step": 1e6 * sum(update[1:]) / (per_iteration * (len(rollout) - 1))}
    return summary["total_timesteps"], summary["wall_seconds"], steady


def run_sb3(algo, env_id, num_envs, steps, device, threads, overrides=(), recurrent=False):
    import torch

    torch.set_num_threads(threads)
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from rl.envs import register_namespace

    cfg = composed_config(algo, env_id, num_envs, steps, overrides)
    register_namespace(cfg.env.id)
    a, e = cfg.algo, cfg.env
    atari = e.preprocessing == "atari"
    if atari:
        import ale_py
        import gymnasium as gym
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack

        gym.register_envs(ale_py)
        venv = VecFrameStack(make_atari_env(e.id, n_envs=num_envs, seed=cfg.seed, vec_env_cls=DummyVecEnv,
                                            env_kwargs=dict(e.kwargs)), 4)
    else:
        venv = make_vec_env(cfg.env.id, n_envs=num_envs, seed=cfg.seed, vec_env_cls=DummyVecEnv)
    if e.normalize_observations or e.normalize_rewards:
        venv = VecNormalize(venv, norm_obs=e.normalize_observations, norm_reward=e.normalize_rewards,
                            clip_obs=e.clip_observations, clip_reward=e.clip_rewards, gamma=a.gamma)
    policy_kwargs = dict(net_arch=dict(pi=list(a.actor_hidden_sizes), vf=list(a.critic_hidden_sizes)),
                         activation_fn=torch.nn.Tanh if a.activation == "tanh" else torch.nn.ReLU)
    if not atari:
        policy_kwargs["log_std_init"] = a.init_log_std
    policy = "CnnPolicy" if atari else "MlpPolicy"
    if recurrent:  # sb3-contrib's RecurrentPPO: an LSTM of our memory_size for actor and critic each
        policy = policy.replace("Policy", "LstmPolicy")
        policy_kwargs["lstm_hidden_size"] = a.memory_size
    batch = num_envs * a.num_steps
    common = dict(n_steps=a.num_steps, gamma=a.gamma, gae_lambda=a.gae_lambda, device=device, seed=cfg.seed,
                  policy_kwargs=policy_kwargs, verbose=0)
    if algo == "ppo":
        from sb3_contrib import RecurrentPPO
        from stable_baselines3 import PPO

        model = (RecurrentPPO if recurrent else PPO)(policy, venv, learning_rate=a.learning_rate, n_epochs=a.update_epochs,
                    batch_size=batch // a.num_minibatches, clip_range=a.clip_coef,
                    clip_range_vf=a.clip_coef if a.clip_value_loss else None, ent_coef=a.entropy_coef,
                    vf_coef=a.value_coef, max_grad_norm=a.max_grad_norm, target_kl=a.target_kl, **common)
    else:
        from sb3_contrib import TRPO

        model = TRPO(policy, venv, learning_rate=a.learning_rate, n_critic_updates=a.vf_iters,
                     batch_size=batch // a.vf_minibatches, cg_max_steps=a.cg_iters, cg_damping=a.cg_damping,
                     line_search_shrinking_factor=a.line_search_shrink,
                     line_search_max_iter=a.line_search_max_steps, target_kl=a.max_kl,
                     normalize_advantage=a.normalize_advantages, **common)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start
    return model.num_timesteps, wall, None


def run_env_only(env_spec, num_envs, steps, backend="gymnasium"):
    import numpy as np

    from rl.envs import make_vector_env

    e = composed_config("ppo", env_spec, num_envs, steps).env
    envs = make_vector_env(e.id, num_envs, "sync", backend=backend, preprocessing=e.preprocessing,
                           env_wrappers=list(e.wrappers), **dict(e.kwargs))
    space = envs.action_space
    rng = np.random.default_rng(0)
    iterations = steps // num_envs
    if hasattr(space, "low"):
        actions = rng.uniform(space.low, space.high, size=(iterations, *space.shape)).astype(space.dtype)
    else:
        actions = rng.integers(0, envs.single_action_space.n, size=(iterations, num_envs))
    envs.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        envs.step(action)
    wall = time.perf_counter() - start
    envs.close()
    return iterations * num_envs, wall, None


def worker(spec):
    name, env_id, num_envs, steps = spec["framework"], spec["env"], spec["num_envs"], spec["steps"]
    device, threads, backend = spec["device"], spec["torch_threads"], spec["backend"]
    if name == "env-only":
        done, wall, steady = run_env_only(env_id, num_envs, steps, backend)
    elif name.startswith("rl-"):
        done, wall, steady = run_ours(FRAMEWORKS[name][0], env_id, num_envs, steps, device, threads, backend,
                                      spec["compile"], [*spec.get("overrides", []), *spec.get("ours", [])])
    else:
        done, wall, steady = run_sb3(FRAMEWORKS[name][0], env_id, num_envs, steps, device, threads,
                                     spec.get("overrides", []), recurrent=name == "sb3-recurrent-ppo")
    print(json.dumps({**spec, "steps_done": done, "wall_seconds": wall, "sps": done / wall, "steady": steady}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["Hopper-v4", "CartPole-v1"])
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--frameworks", nargs="+", default=["rl-ppo", "rl-trpo", "sb3-ppo", "sb3-trpo"],
                        choices=list(FRAMEWORKS))
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for every framework")
    parser.add_argument("--env-only", action="store_true", help="also measure the env-only limit")
    parser.add_argument("--backends", nargs="+", default=["gymnasium"], choices=["gymnasium", "envpool"],
                        help="env backends for our rows and the env-only limits")
    parser.add_argument("--compile", choices=["eager", "compiled", "both"], default="eager",
                        help="our rows with algo.compile off, on, or both")
    parser.add_argument("--overrides", nargs="*", default=[], help="key=value overrides for every row: ours, and "
                        "the composed config the anchors are built from (e.g. a recipe's algo.num_steps=32)")
    parser.add_argument("--ours", nargs="*", default=[], help="key=value overrides for our rows alone (shown in "
                        "their label), e.g. algo.share_encoder=true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if any(f.startswith("sb3") for f in args.frameworks):
        try:
            import sb3_contrib  # noqa: F401
            import stable_baselines3  # noqa: F401
        except ImportError:
            sys.exit('error: the anchors need stable-baselines3 and sb3-contrib: pip install -e ".[bench]"')

    compiles = {"eager": [False], "compiled": [True], "both": [False, True]}[args.compile]
    rows = []
    for env_id in args.envs:
        for num_envs in args.num_envs:
            specs = []
            if args.env_only:
                specs += [("env-only", backend, False) for backend in args.backends]
            for name in args.frameworks:
                if name.startswith("rl-"):  # algo.compile exists for PPO only
                    specs += [(name, backend, compile) for backend in args.backends
                              for compile in (compiles if name == "rl-ppo" else [False])]
                else:
                    specs.append((name, "gymnasium", False))
            for name, backend, compile in specs:
                spec = {"framework": name, "env": env_id, "num_envs": num_envs, "steps": args.steps,
                        "device": args.device, "torch_threads": args.threads, "backend": backend, "compile": compile,
                        "ours": args.ours if name.startswith("rl-") else [], "overrides": args.overrides}
                out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=REPO,
                                     capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                if out.returncode != 0:
                    sys.exit(f"error: {name} on {env_id} x{num_envs} failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  {label(rows[-1]):28s} {env_id} x{num_envs}: {rows[-1]['sps']:.0f} sps", file=sys.stderr,
                      flush=True)
    print_table(rows)
    print(f"\ndevice {args.device}, {args.threads} torch thread(s), {os.cpu_count()} cores; our SPS: whole run "
          f"(set-up, compile warm-up, final checkpoint); SB3's: learn()")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def label(row):
    if row["framework"].startswith("rl-"):
        extra = "".join(f",{override}" for override in row.get("ours", []))
        return f"{row['framework']}[{row['backend']},{'compiled' if row['compile'] else 'eager'}{extra}]"
    if row["framework"] == "env-only":
        return f"env-only[{row['backend']}]"
    return row["framework"]


def print_table(rows):
    def find(name, env_id, num_envs, backend="gymnasium"):
        return next((r for r in rows if (r["framework"], r["env"], r["num_envs"], r["backend"]) ==
                     (name, env_id, num_envs, backend)), None)

    print("| framework | algo | env | num_envs | steps | wall s | SPS | ratio to anchor | share of env-only limit "
          "(same backend) | steady SPS | steady ratio | rollout us/step | update us/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        algo = FRAMEWORKS.get(r["framework"], ("-", None))[0]
        anchor_name = FRAMEWORKS.get(r["framework"], (None, None))[1]
        if anchor_name == "sb3-ppo" and any(o.startswith("algo.memory=") and o != "algo.memory=none"
                                            for o in r.get("ours", [])):
            anchor_name = "sb3-recurrent-ppo"
        anchor = find(anchor_name, r["env"], r["num_envs"]) if anchor_name else None
        limit = find("env-only", r["env"], r["num_envs"], r["backend"])
        ratio = f"{r['sps'] / anchor['sps']:.2f}x" if anchor else "-"
        share = f"{100 * r['sps'] / limit['sps']:.0f}%" if limit and r["framework"] != "env-only" else "-"
        steady = r.get("steady") or {}
        steady_ratio = f"{steady['sps'] / anchor['sps']:.2f}x" if steady and anchor else "-"
        columns = [f"{steady['sps']:.0f}", steady_ratio, f"{steady['rollout_us_per_step']:.0f}",
                   f"{steady['update_us_per_step']:.0f}"] if steady else ["-"] * 4
        print(f"| {label(r)} | {algo} | {r['env']} | {r['num_envs']} | {r['steps_done']} | {r['wall_seconds']:.1f} | "
              f"{r['sps']:.0f} | {ratio} | {share} | " + " | ".join(columns) + " |")


if __name__ == "__main__":
    main()
