"""Returns at a fixed budget over seeds: run a matrix of (env, algo, seed), keep compact results.

    python scripts/benchmark_returns.py --envs Hopper-v4 --algos trpo ppo --seeds 1 2 3 4 5
    python scripts/benchmark_returns.py --envs Hopper-v4 --algos trpo --seeds 1 2 3 \\
        --name kl03 algo.max_kl=0.03                      # a named cell: extra overrides for every run
    python scripts/benchmark_returns.py --matrix benchmarks/matrices/hopper_study.json   # many cells, one queue

Each run is `python -m rl.train algo=<algo> env=<env> seed=<k> [overrides]` with the shipped configs, in
its own run folder under `--runs-dir` (not committed). Algos `sb3-ppo`, `sb3-trpo` and `sb3-recurrent-ppo` run
Stable-Baselines3 / sb3-contrib with the RL Baselines3 Zoo recipe (scripts/sb3_baseline.py), evaluated the
same way. What is kept, under `--out`:

    <out>/<env>/<cell>/seed<k>/summary.json   the run's summary.json, plus the mean of its last 5
                                              evaluation points and the command that made it
    <out>/<env>/<cell>/seed<k>/curve.csv      step, training and evaluation returns (mean, and the
                                              evaluation's std) and episode lengths per iteration
    <out>/<env>/<cell>/seed<k>/stats.csv      step and the update's diagnostics (entropy, KL, CG residual,
                                              explained variance, ...) per iteration (SB3 cells: its
                                              own train/* names)
    <out>/<env>/<cell>/seed<k>/config.yaml    the run's resolved config (rl runs)

<cell> is the algo, or `<algo>-<name>` for a named cell. Runs whose result folder already holds a
summary.json are skipped, a finished run folder is only collected, and a run stopped midway resumes from
its checkpoint (MuJoCo episodes restart there), so the runner can be stopped and started again. `--parallel` runs go at once (default: the cores).
`--recollect` copies the results out of finished run folders again (after this script learns to keep more).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rl import results

REPO = Path(__file__).resolve().parent.parent
SB3_ALGOS = ("sb3-ppo", "sb3-trpo", "sb3-recurrent-ppo")
# What rl.results.STATS_TAGS keeps, for for SB3 / sb3-contrib cells, under their own names (train/std is the policy's mean std;
# sb3-contrib's train/kl_divergence_loss is the KL averaged over action dimensions).
SB3_STATS_TAGS = ("train/std", "train/kl_divergence_loss", "train/approx_kl", "train/clip_fraction",
                  "train/explained_variance", "train/value_loss", "train/entropy_loss")


def cell_name(algo, name=None):
    return f"{algo}-{name}" if name else algo


def jobs_from_matrix(matrix):
    """[{env, algo, name, overrides, seed, folder}] from {"seeds": [...], "cells": [{env, algo, name?, id?,
    overrides?, seeds?, folder?}]}. `id`: the env id for a family config (env=minatar, id=MinAtar/Breakout-v1);
    the results' folder is `folder`, else named after the id ("/" -> "-"), else after `env`."""
    jobs = []
    cells = matrix["cells"]
    seeds = sorted({seed for cell in cells for seed in cell.get("seeds", matrix.get("seeds", []))})
    for seed in seeds:  # seed-major: every cell's first seed finishes before any cell's second
        for cell in cells:
            if seed in cell.get("seeds", matrix.get("seeds", [])):
                jobs.append({"env": cell["env"], "algo": cell["algo"], "name": cell.get("name"),
                             "overrides": ([f"env.id={cell['id']}"] if "id" in cell else []) +
                             list(cell.get("overrides", [])) + list(matrix.get("overrides", [])),
                             "seed": seed, "id": cell.get("id"),
                             "folder": cell.get("folder", cell.get("id", cell["env"]).replace("/", "-"))})
    return jobs


def command(job, run_dir, resume=False):
    if job["algo"] in SB3_ALGOS:  # a family cell's env id is the env SB3 makes; its wrappers come as options
        overrides = [o for o in job["overrides"] if not o.startswith("env.id=")]
        return [sys.executable, str(REPO / "scripts" / "sb3_baseline.py"), f"--algo={job['algo'][4:]}",
                f"--env={job.get('id') or job['env']}", f"--seed={job['seed']}", f"--out={run_dir}", *overrides]
    if resume:
        return results.train_command(None, f"resume={run_dir}")
    return results.train_command(run_dir, f"algo={job['algo']}", f"env={job['env']}", f"seed={job['seed']}",
                                 *job["overrides"])


def resumable(job, run_dir):
    return job["algo"] not in SB3_ALGOS and (Path(run_dir) / "checkpoints" / "latest").exists()


def collect_result(job, run_dir, result_dir, cmd, resumed):
    """Copy what the page needs out of a finished run folder."""
    summary = results.summary(run_dir)
    rows = results.read_csv(Path(run_dir) / "curve.csv") if job["algo"] in SB3_ALGOS else results.curve(run_dir)
    evaluations = [row["eval_return"] for row in rows if row["eval_return"] not in (None, "")]
    summary["eval_return_last5_mean"] = sum(evaluations[-5:]) / len(evaluations[-5:]) if evaluations else None
    summary["eval_points"] = len(evaluations)
    summary["cell"] = cell_name(job["algo"], job["name"])
    summary["overrides"] = job["overrides"]
    summary["resumed"] = resumed
    summary["command"] = " ".join(cmd[1:] if cmd[0] == sys.executable else cmd)
    result_dir.mkdir(parents=True, exist_ok=True)
    config = Path(run_dir) / ".hydra" / "config.yaml"
    if config.exists():  # the whole resolved config, so the cell can be rerun after the defaults change
        (result_dir / "config.yaml").write_text(config.read_text())
    results.write_csv(result_dir / "curve.csv", rows)
    if job["algo"] not in SB3_ALGOS:
        columns, stats = results.stats(run_dir)
        results.write_csv(result_dir / "stats.csv", stats, columns)
    else:  # sb3_baseline.py writes one TensorBoard folder per run under <run>/tensorboard
        for folder in sorted((Path(run_dir) / "tensorboard").glob("*"))[-1:]:
            columns, stats = results.stats(folder, SB3_STATS_TAGS)
            results.write_csv(result_dir / "stats.csv", stats, columns)
    (result_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (rl.train syntax)")
    parser.add_argument("--envs", nargs="+", default=[])
    parser.add_argument("--algos", nargs="+", default=[])
    parser.add_argument("--seeds", nargs="+", type=int, help="default 1 2 3; with --matrix: only these of its seeds")
    parser.add_argument("--name", default=None, help="name of this cell (results go to <algo>-<name>)")
    parser.add_argument("--matrix", type=Path, help="JSON file of cells, see jobs_from_matrix")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "benchmarks")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dry-run", action="store_true", help="list the runs that would start, start none")
    parser.add_argument("--recollect", action="store_true",
                        help="copy the results out of finished run folders again, even where they were collected")
    args = parser.parse_args(argv)

    if args.matrix:
        jobs = jobs_from_matrix(json.loads(args.matrix.read_text()))
        jobs = [job for job in jobs if args.seeds is None or job["seed"] in args.seeds]
    else:
        if not args.envs or not args.algos:
            parser.error("give --envs and --algos, or --matrix")
        jobs = [{"env": env, "algo": algo, "name": args.name, "overrides": list(args.overrides), "seed": seed}
                for seed in args.seeds or [1, 2, 3] for env in args.envs for algo in args.algos]

    pending = []
    for job in jobs:
        where = Path(job.get("folder", job["env"])) / cell_name(job["algo"], job["name"]) / f"seed{job['seed']}"
        result_dir, run_dir = args.out / where, args.runs_dir / where
        if args.recollect and (run_dir / "summary.json").exists() and (result_dir / "summary.json").exists():
            if args.dry_run:
                print(f"would collect {where} again from {run_dir}", flush=True)
                continue
            kept = json.loads((result_dir / "summary.json").read_text())  # how the run was made, not how now
            collect_result(job, run_dir, result_dir, kept["command"].split(), kept["resumed"])
            print(f"done  {where} (collected again from {run_dir})", flush=True)
            continue
        if (result_dir / "summary.json").exists():
            print(f"skip  {where} (done)", flush=True)
            continue
        pending.append((job, where, result_dir, run_dir))
    if args.dry_run:
        for job, where, _, run_dir in pending:
            print(f"would run {where}: {' '.join(command(job, run_dir, resumable(job, run_dir)))}")
        return 0

    failures, running = 0, []
    while pending or running:
        while pending and len(running) < args.parallel:
            job, where, result_dir, run_dir = pending.pop(0)
            if (run_dir / "summary.json").exists():  # finished, but its results were never collected
                collect_result(job, run_dir, result_dir, command(job, run_dir), resumed=False)
                print(f"done  {where} (collected from {run_dir})", flush=True)
                continue
            resumed = resumable(job, run_dir)
            if not resumed and run_dir.exists() and job["algo"] not in SB3_ALGOS:
                run_dir = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            cmd = command(job, run_dir, resumed)
            log = open(run_dir.parent / f"{run_dir.name}.log", "a")
            print(f"start {where}{' (resuming)' if resumed else ''}", flush=True)
            process = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            running.append((process, log, job, where, result_dir, run_dir, cmd, resumed))
        time.sleep(1.0)
        for entry in list(running):
            process, log, job, where, result_dir, run_dir, cmd, resumed = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            log.close()
            if process.returncode != 0:
                failures += 1
                print(f"FAIL  {where}: exit {process.returncode}, see {log.name}", flush=True)
                continue
            if not (run_dir / "summary.json").exists():  # stopped at a checkpoint (a signal): not finished
                print(f"stop  {where}: stopped at its checkpoint; run this again to resume it", flush=True)
                continue
            summary = collect_result(job, run_dir, result_dir, cmd, resumed)
            print(f"done  {where}: final eval {summary['eval_return_mean']:.1f}, last-5 eval "
                  f"{summary['eval_return_last5_mean']:.1f}, {summary['wall_seconds']:.0f}s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
