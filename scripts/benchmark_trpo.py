"""Time one TRPO update and one Fisher-vector product, analytic vs double-backprop, side by side.

    python scripts/benchmark_trpo.py [--devices cpu cuda] [--repeats 5] [--json out.json]

A Hopper-sized problem (11 observations, 3 actions) with batches of 2048 and 16384 samples and 64x64 and
256x256 networks. Both FVP methods are timed one after the other on the same problem in one process. Reports
seconds per FVP (after the per-update set-up), per policy step (gradient, CG, line search) and per whole
update (policy step + value fit), and the hessian/analytic ratio.
"""

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import gymnasium as gym
import torch
from omegaconf import OmegaConf

from rl.algos import trpo
from rl.fisher import FISHER_VECTOR_PRODUCTS
from rl.policy import Agent
from rl.rollout import Batch

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "algo" / "trpo.yaml"
OBS_DIM, ACTION_DIM = 11, 3


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    """Median wall seconds of `fn()` over `repeats` runs, after one warm-up."""
    fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def make_problem(batch_size, hidden, device, seed=0):
    torch.manual_seed(seed)
    agent = Agent(gym.spaces.Box(-10, 10, (OBS_DIM,)), gym.spaces.Box(-1, 1, (ACTION_DIM,)), hidden, hidden).to(device)
    obs = torch.randn(batch_size, OBS_DIM, device=device)
    with torch.no_grad():
        mean, log_std = agent.actor(obs)
        actions = agent.actor.sample(mean, log_std)
        log_probs = agent.actor.log_prob(mean, log_std, actions)
        values = agent.critic(obs)
    advantages = torch.randn(batch_size, device=device)
    return agent, Batch(obs, actions, log_probs, values, advantages, values + advantages)


def bench_cell(device, batch_size, hidden, repeats):
    cfg = OmegaConf.load(CONFIG)
    agent, batch = make_problem(batch_size, hidden, device)
    vector = torch.randn(sum(p.numel() for p in agent.actor.parameters()), device=device)
    initial = copy.deepcopy(agent.state_dict())
    row = {"device": device.type, "batch": batch_size, "hidden": "x".join(map(str, hidden))}
    for method in ("analytic", "hessian"):
        cfg.fvp = method
        product = FISHER_VECTOR_PRODUCTS[method](agent.actor, batch.obs)
        row[f"fvp_{method}"] = timed(lambda: product(vector), device, repeats * 4)
        row[f"setup_{method}"] = timed(lambda: FISHER_VECTOR_PRODUCTS[method](agent.actor, batch.obs), device, repeats)

        def policy_step():
            agent.load_state_dict(initial)
            trpo.policy_step(agent.actor, batch, cfg)

        row[f"step_{method}"] = timed(policy_step, device, repeats)
        optimizers = trpo.make_optimizers(agent, cfg)
        generator = torch.Generator(device=device).manual_seed(0)

        def full_update():
            agent.load_state_dict(initial)
            trpo.update(agent, optimizers, batch, cfg, generator)

        row[f"update_{method}"] = timed(full_update, device, max(1, repeats // 2))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--batches", nargs="+", type=int, default=[2048, 16384])
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print("| device | batch | net | FVP analytic ms | FVP hessian ms | FVP ratio | policy step analytic s "
          "| policy step hessian s | step ratio | update analytic s | update hessian s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.devices:
        device = torch.device(name)
        for batch_size in args.batches:
            for width in args.hidden:
                row = bench_cell(device, batch_size, (width, width), args.repeats)
                rows.append(row)
                print(f"| {row['device']} | {batch_size} | {row['hidden']} | {1e3 * row['fvp_analytic']:.2f} | "
                      f"{1e3 * row['fvp_hessian']:.2f} | {row['fvp_hessian'] / row['fvp_analytic']:.2f}x | "
                      f"{row['step_analytic']:.4f} | {row['step_hessian']:.4f} | "
                      f"{row['step_hessian'] / row['step_analytic']:.2f}x | {row['update_analytic']:.3f} | "
                      f"{row['update_hessian']:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
