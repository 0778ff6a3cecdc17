"""Which changed a run's evaluation between two checkpoints: the weights or the observation statistics?

    python -m rl.train ... checkpoint_keep=100          # keep every checkpoint (one per checkpoint_every)
    python scripts/policy_drift.py <run dir> 450560 573440 [more steps] [--episodes 10] [--json out.json]

A policy acts on observations normalized by running statistics that keep moving during training, outside
the trust region (TRPO bounds the change of the weights only). For each consecutive pair (a, b) of the
given checkpoint steps this evaluates, on the run's own evaluation seeds (seed + 10000 + i, deterministic):
weights a with statistics a (the run's evaluation at a), weights b with statistics b, and the two swaps:
weights a with statistics b, weights b with statistics a. Each is reported as mean return, mean episode
length and return per step (a fall shortens the episode; a slower gait lowers the return per step).
It also measures how far the action distribution moved from a to b on the states policy a visits, as the
mean KL(pi_a || pi_b), and splits it: the weights' part (statistics held at a) and the statistics' part
(weights held at a).
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

from rl import checkpoint
from rl.evaluate import EVAL_SEED_OFFSET, evaluate
from rl.trained import checkpoint_size_limit, trained_policy


def load_agent(run_dir, step):
    state = checkpoint.load(checkpoint.resolve(run_dir, step), checkpoint_size_limit(run_dir))
    return trained_policy(state).agent, checkpoint.config_of(state)


def with_statistics(weights_agent, statistics_agent):
    """A copy of `weights_agent` that normalizes observations with `statistics_agent`'s statistics."""
    hybrid = copy.deepcopy(weights_agent)
    hybrid.obs_normalizer.load_state_dict(statistics_agent.obs_normalizer.state_dict())
    return hybrid


class FirstEpisodeStates(gym.Wrapper):
    """Appends to `states` the raw observations its env's first episode acts on (an evaluation runs one
    episode per sub-env; the vector env's autoreset starts a second, which is not kept)."""

    def __init__(self, env, states):
        super().__init__(env)
        self.states, self.recording = states, None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.recording is None:
            self.recording = True
            self.states.append(obs)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.recording:
            if terminated or truncated:
                self.recording = False
            else:
                self.states.append(obs)
        return obs, reward, terminated, truncated, info


def evaluate_keeping_states(agent, env_id, episodes, seed, env_kwargs):
    """rl.evaluate's evaluation, plus the raw observations (states, obs_dim) the policy acted on."""
    states = []
    returns, lengths = evaluate(agent, env_id, episodes, seed, env_kwargs,
                                wrappers=[lambda env: FirstEpisodeStates(env, states)])
    return returns, lengths, torch.as_tensor(np.asarray(states), dtype=torch.float32)


@torch.no_grad()
def mean_kl(old_agent, new_agent, observations):
    """Mean KL(old || new) of the two agents' action distributions over raw `observations`."""
    old = old_agent.actor(old_agent.obs_normalizer(observations))
    new = new_agent.actor(new_agent.obs_normalizer(observations))
    return float(old_agent.actor.kl(old, new).mean())


def compare(run_dir, step_a, step_b, episodes):
    agent_a, config = load_agent(run_dir, step_a)
    agent_b, _ = load_agent(run_dir, step_b)
    if config.env.get("backend", "gymnasium") != "gymnasium":
        raise checkpoint.CheckpointError(f"{run_dir}: an envpool run; policy_drift.py replays gymnasium runs")
    env_id, seed = config.env.id, config.seed + EVAL_SEED_OFFSET
    env_kwargs = OmegaConf.to_container(config.env.kwargs)
    combinations = {"weights a, statistics a": agent_a, "weights b, statistics b": agent_b,
                    "weights a, statistics b": with_statistics(agent_a, agent_b),
                    "weights b, statistics a": with_statistics(agent_b, agent_a)}
    rows = {}
    for name, agent in combinations.items():
        if agent is agent_a:  # policy a's own evaluation also gives the states the KL is measured on
            returns, lengths, states = evaluate_keeping_states(agent, env_id, episodes, seed, env_kwargs)
        else:
            returns, lengths = evaluate(agent, env_id, episodes, seed, env_kwargs)
        rows[name] = {"return": float(np.mean(returns)), "return_std": float(np.std(returns)),
                      "length": float(np.mean(lengths)),
                      "return_per_step": float(np.sum(returns) / np.sum(lengths))}
    drift = {"kl": mean_kl(agent_a, agent_b, states),
             "kl_weights": mean_kl(agent_a, combinations["weights b, statistics a"], states),
             "kl_statistics": mean_kl(agent_a, combinations["weights a, statistics b"], states),
             "states": len(states)}
    return {"step_a": step_a, "step_b": step_b, "evaluations": rows, "drift": drift}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("steps", type=int, nargs="+", help="checkpoint steps, compared pairwise in order")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if len(args.steps) < 2:
        parser.error("give at least two checkpoint steps")
    try:
        results = [compare(args.run_dir, a, b, args.episodes) for a, b in zip(args.steps, args.steps[1:])]
    except checkpoint.CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("| a -> b | weights | statistics | return | length | return per step |")
    print("|---|---|---|---|---|---|")
    for result in results:
        for name, row in result["evaluations"].items():
            weights, statistics = (part.split()[-1] for part in name.split(", "))
            print(f"| {result['step_a']} -> {result['step_b']} | {weights} | {statistics} | "
                  f"{row['return']:,.0f} +/- {row['return_std']:,.0f} | {row['length']:,.0f} | "
                  f"{row['return_per_step']:.2f} |")
    print()
    print("| a -> b | KL(pi_a || pi_b) | of it, weights only | statistics only | states |")
    print("|---|---|---|---|---|")
    for result in results:
        drift = result["drift"]
        print(f"| {result['step_a']} -> {result['step_b']} | {drift['kl']:.4g} | {drift['kl_weights']:.4g} | "
              f"{drift['kl_statistics']:.4g} | {drift['states']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
