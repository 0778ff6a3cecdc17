"""Data-parallel scaling: SPS of `torchrun --nproc_per_node=N -m rl.train` for several N, side by side.

    python scripts/benchmark_scaling.py --ranks 1 2 --algos ppo trpo --env Hopper-v4 --steps-per-rank 40960

Weak scaling: every rank keeps the config's `env.num_envs`, so the global batch (and the steps of a run)
grow with N; the run length is `--steps-per-rank` x N. Each row is one run (evaluation and checkpoints
off), all in this invocation, one after another. Reported: SPS over the training loop (TensorBoard's
last `charts/sps`), speed-up and efficiency against 1 rank, and the share of the loop that ranks spent in
collectives (`time/communication_seconds`, which includes waiting for the slowest rank), with the
communication time of one update.
"""

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

from rl import results

REPO = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(algo, env_id, ranks, steps_per_rank, device, extra):
    with tempfile.TemporaryDirectory() as root:
        run_dir = Path(root) / "run"
        torchrun = [f"--nproc_per_node={ranks}", "--nnodes=1", "--rdzv_backend=c10d",
                    f"--rdzv_endpoint=127.0.0.1:{free_port()}"]
        result = results.train(run_dir, f"algo={algo}", f"env={env_id}", f"total_timesteps={steps_per_rank * ranks}",
                               f"device={device}", "eval_episodes=0", "checkpoint_every=0", *extra, cwd=REPO,
                               env={"OMP_NUM_THREADS": "1"}, check=False, torchrun=torchrun)
        if result.returncode != 0:
            sys.exit(f"error: {algo} x{ranks} failed:\n{result.stderr[-3000:]}")
        logged = results.scalars(run_dir, wall_clock=True)
        steps, sps = logged["charts/sps"][-1]
        loop = steps / sps
        communication = sum(value for _, value in logged.get("time/communication_seconds", []))
        iterations = len(logged["charts/sps"])
        return {"algo": algo, "env": env_id, "ranks": ranks, "steps": steps, "sps": sps, "loop_seconds": loop,
                "communication_share": communication / loop, "communication_per_update_ms":
                1000 * communication / iterations}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra rl.train overrides for every run")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--algos", nargs="+", default=["ppo", "trpo"])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--steps-per-rank", type=int, default=40_960)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = []
    for algo in args.algos:
        for ranks in args.ranks:
            rows.append(measure(algo, args.env, ranks, args.steps_per_rank, args.device, args.overrides))
            print(f"  {algo} x{ranks}: {rows[-1]['sps']:.0f} sps", file=sys.stderr, flush=True)
    print(f"cores: {os.cpu_count()}, device: {args.device}, env: {args.env}, {args.steps_per_rank} steps per rank")
    print("| algo | ranks | steps | SPS | speed-up | efficiency | time in collectives | collectives per update ms |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["algo"] == row["algo"] and r["ranks"] == min(args.ranks))
        speedup = row["sps"] / base["sps"]
        print(f"| {row['algo']} | {row['ranks']} | {row['steps']} | {row['sps']:.0f} | {speedup:.2f}x | "
              f"{speedup / (row['ranks'] / base['ranks']):.0%} | {row['communication_share']:.1%} | "
              f"{row['communication_per_update_ms']:.1f} |")


if __name__ == "__main__":
    main()
