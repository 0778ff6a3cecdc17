"""Whole processes, ours against SB3 / sb3-contrib, timed in interleaved pairs: the median of the pair ratios.

    python scripts/benchmark_paired.py --env Hopper-v4 --num-envs 1 8 --algos ppo trpo --steps 40960 \\
        --pairs 5 --env-only --json benchmarks/speed/paired_hopper_40k.json

A machine's speed drifts (other tenants, frequency, caches), and a ratio of two numbers taken minutes apart
carries that drift. Here each pair runs ours and the anchor back to back, in alternating order (A B, B A,
...), and the figure is the median over pairs of (our SPS / the anchor's SPS): drift slower than a pair
cancels. Each side is one whole process timed from launch to exit (interpreter start, imports, env
construction, training, the final save), at the settings benchmark_sps.py matches (our composed config;
SB3 built from it), 1 torch thread, sync vector envs, no evaluation. Steps are rounded up to whole rollouts
of our config, so both sides take the same number of steps (SB3 also stops at a whole rollout).

Besides the whole-process ratio: our steady SPS (all iterations but the first, from the run's own rollout
and update times) against SB3's learn() SPS, and our rollout and update microseconds per step. `--env-only`
also times the vector env alone (random actions, the same construction) in every pair, for the rollout
overhead: our collector's time per step minus the env's.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchmark_sps as sps

from rl import results

REPO = Path(__file__).resolve().parent.parent


def rounded_steps(algo, env_spec, num_envs, steps):
    batch = num_envs * sps.composed_config(algo, env_spec, num_envs, steps).algo.num_steps
    return -(-steps // batch) * batch


def timed(argv):
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=results._environment(
        {"PYTHONWARNINGS": "ignore"}))
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(argv[1:4])} ... exited {out.returncode}:\n{out.stderr[-3000:]}")
    return wall, out.stdout


def ours(algo, env_spec, num_envs, steps, backend, extra):
    with tempfile.TemporaryDirectory() as run_dir:
        wall, _ = timed(results.train_command(
            run_dir, f"algo={algo}", *sps.env_overrides(env_spec), f"env.num_envs={num_envs}",
            f"total_timesteps={steps}", "device=cpu", "torch_threads=1", f"env.backend={backend}",
            "env.vectorization=sync", "eval_episodes=0", "checkpoint_every=0", *extra))
        done = results.summary(run_dir)["total_timesteps"]
        rollout, update = results.values(run_dir, "time/rollout_seconds", "time/update_seconds")
    per_iteration = done / len(rollout)
    steady_steps = per_iteration * (len(rollout) - 1)
    steady = None if len(rollout) < 2 else {
        "sps": steady_steps / (sum(rollout[1:]) + sum(update[1:])),
        "rollout_us_per_step": 1e6 * sum(rollout[1:]) / steady_steps,
        "update_us_per_step": 1e6 * sum(update[1:]) / steady_steps}
    return {"steps": done, "wall_seconds": wall, "sps": done / wall, "steady": steady}


def worker(framework, env_spec, num_envs, steps, backend="gymnasium"):
    """benchmark_sps.py's worker as a whole process: SB3 / sb3-contrib ("sb3-ppo", "sb3-trpo") or "env-only"."""
    spec = {"framework": framework, "env": env_spec, "num_envs": num_envs, "steps": steps, "device": "cpu",
            "torch_threads": 1, "backend": backend, "compile": False}
    wall, stdout = timed([sys.executable, str(REPO / "scripts" / "benchmark_sps.py"), "--worker", json.dumps(spec)])
    row = json.loads(stdout.strip().splitlines()[-1])
    # learn()'s own SPS for SB3 (no compile warm-up there: its steady figure); the env alone for env-only.
    return {"steps": row["steps_done"], "wall_seconds": wall, "sps": row["steps_done"] / wall,
            "inner_sps": row["sps"]}


def measure(algo, env_spec, num_envs, steps, backend, pairs, env_only, extra):
    anchor = f"sb3-{algo}"
    runs = {"ours": [], "anchor": [], "env-only": []}
    for pair in range(pairs):
        order = ["ours", "anchor"] if pair % 2 == 0 else ["anchor", "ours"]
        for side in order:
            if side == "ours":
                runs["ours"].append(ours(algo, env_spec, num_envs, steps, backend, extra))
            else:
                runs["anchor"].append(worker(anchor, env_spec, num_envs, steps))
        if env_only:
            runs["env-only"].append(worker("env-only", env_spec, num_envs, steps, backend))
        a, b = runs["ours"][-1], runs["anchor"][-1]
        print(f"  {algo} x{num_envs} [{backend}] pair {pair + 1}: ours {a['sps']:.0f} sps ({a['wall_seconds']:.1f} s), "
              f"{anchor} {b['sps']:.0f} sps ({b['wall_seconds']:.1f} s): {a['sps'] / b['sps']:.2f}x",
              file=sys.stderr, flush=True)
    return {"algo": algo, "env": env_spec, "num_envs": num_envs, "steps": steps, "backend": backend,
            "ours_overrides": extra, "runs": runs, **summarize(runs)}


def summarize(runs):
    pairs = list(zip(runs["ours"], runs["anchor"]))
    whole = [a["sps"] / b["sps"] for a, b in pairs]
    steady = [a["steady"]["sps"] / b["inner_sps"] for a, b in pairs if a["steady"]]
    out = {"whole_ratio_median": statistics.median(whole), "whole_ratio_range": [min(whole), max(whole)],
           "steady_ratio_median": statistics.median(steady) if steady else None,
           "ours_whole_sps_median": statistics.median(a["sps"] for a in runs["ours"]),
           "anchor_whole_sps_median": statistics.median(b["sps"] for b in runs["anchor"])}
    if steady:
        out["ours_steady_sps_median"] = statistics.median(a["steady"]["sps"] for a in runs["ours"])
        out["anchor_learn_sps_median"] = statistics.median(b["inner_sps"] for b in runs["anchor"])
        out["rollout_us_median"] = statistics.median(a["steady"]["rollout_us_per_step"] for a in runs["ours"])
        out["update_us_median"] = statistics.median(a["steady"]["update_us_per_step"] for a in runs["ours"])
    if runs["env-only"]:
        env_us = statistics.median(1e6 / r["inner_sps"] for r in runs["env-only"])
        out["env_only_us_median"] = env_us
        if steady:
            out["rollout_overhead_us"] = out["rollout_us_median"] - env_us
    return out


def print_table(rows):
    print("| algo | env | num_envs | backend | steps | pairs | whole-process ratio, median (range) | ours / anchor "
          "whole SPS | steady ratio, median | ours steady / SB3 learn() SPS | rollout / update us per step | "
          "env-only us | rollout overhead us |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        low, high = r["whole_ratio_range"]
        steady = f"{r['steady_ratio_median']:.2f}x" if r["steady_ratio_median"] else "-"
        steady_sps = f"{r['ours_steady_sps_median']:.0f} / {r['anchor_learn_sps_median']:.0f}" \
            if r["steady_ratio_median"] else "-"
        split = f"{r['rollout_us_median']:.0f} / {r['update_us_median']:.0f}" if "rollout_us_median" in r else "-"
        env_us = f"{r['env_only_us_median']:.0f}" if "env_only_us_median" in r else "-"
        overhead = f"{r['rollout_overhead_us']:.0f}" if "rollout_overhead_us" in r else "-"
        extra = "".join(f", {o}" for o in r["ours_overrides"])
        print(f"| {r['algo']} | {r['env']} | {r['num_envs']} | {r['backend']}{extra} | {r['steps']} | "
              f"{len(r['runs']['ours'])} | {r['whole_ratio_median']:.2f}x ({low:.2f}-{high:.2f}) | "
              f"{r['ours_whole_sps_median']:.0f} / {r['anchor_whole_sps_median']:.0f} | {steady} | {steady_sps} | "
              f"{split} | {env_us} | {overhead} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--algos", nargs="+", default=["ppo", "trpo"], choices=["ppo", "trpo"])
    parser.add_argument("--steps", type=int, default=40_960, help="rounded up to whole rollouts of our config")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["gymnasium"], choices=["gymnasium", "envpool"],
                        help="our env backend (the anchor always steps gymnasium's envs)")
    parser.add_argument("--env-only", action="store_true", help="also time the vector env alone in every pair")
    parser.add_argument("--ours", nargs="*", default=[], help="key=value overrides for our runs alone")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.pairs < 1 or args.steps < 1:
        sys.exit("error: --pairs and --steps must be positive")
    try:
        import sb3_contrib  # noqa: F401
        import stable_baselines3  # noqa: F401
    except ImportError:
        sys.exit('error: the anchors need stable-baselines3 and sb3-contrib: pip install -e ".[bench]"')
    rows = []
    for algo in args.algos:
        for num_envs in args.num_envs:
            steps = rounded_steps(algo, args.env, num_envs, args.steps)
            for backend in args.backends:
                rows.append(measure(algo, args.env, num_envs, steps, backend, args.pairs, args.env_only, args.ours))
                if args.json:  # after every cell, so a stopped comparison keeps what it measured
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)
    print("\n1 torch thread each, sync vector envs, no evaluation; whole process: launch to exit; "
          "steady: ours without its first iteration, SB3's learn()")


if __name__ == "__main__":
    main()
