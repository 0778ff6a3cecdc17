"""Markdown tables from benchmark results: per (env, cell), the mean +/- std over seeds.

    python scripts/benchmark_table.py benchmarks/Hopper-v4 [--cells trpo ppo sb3-trpo] [--seeds 1 2 3]
    python scripts/benchmark_table.py benchmarks/Hopper-v4 --stats losses/entropy trpo/cg_residual --at 0.1 0.5 1

Reads <env>/<cell>/seed<k>/summary.json as scripts/benchmark_returns.py writes them. Columns: the final
deterministic evaluation, the mean of the last 5 evaluation points, the best evaluation, the mean return of
the last 100 training episodes, wall time and SPS; each as mean +/- standard deviation over the seeds
(population std), with the per-seed final evaluations listed.

`--stats TAG ...` prints, instead, one row per run and tag from the runs' stats.csv: the tag's mean over the
last `--window` of the run's steps before each point `--at` (fractions of the run), beside the evaluation
return there, so a late decline can be read against what the updates logged.
"""

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from rl import results

COLUMNS = (("eval_return_mean", "final eval"), ("eval_return_last5_mean", "last-5 eval"),
           ("best_eval_return_mean", "best eval"), ("train_return_mean_last100", "train last-100"))


def collect(paths, seeds=None):
    """{(env, cell): {seed: summary}} from result folders."""
    results = defaultdict(dict)
    for root in paths:
        for path in sorted(Path(root).rglob("summary.json")):
            summary = {**json.loads(path.read_text()), "_path": str(path)}
            if "cell" not in summary or (seeds and summary["seed"] not in seeds):
                continue
            results[(summary["env"], summary["cell"])][summary["seed"]] = summary
    return results


def number(value, scale=None):
    """Whole numbers for returns in the hundreds and more, one decimal below (Reacher's are about -4); `scale`
    (a mean) picks the format for its spread."""
    return f"{value:,.0f}" if abs(value if scale is None else scale) >= 100 else f"{value:.1f}"


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{number(mean)} +/- {number(statistics.pstdev(values), mean)}" if len(values) > 1 else number(mean)


def table(results, cells=None):
    lines = ["| env | cell | seeds | " + " | ".join(name for _, name in COLUMNS) +
             " | wall min | SPS | final eval per seed |",
             "|---|---|---|" + "---|" * (len(COLUMNS) + 3)]
    keys = sorted(results, key=lambda k: (k[0], cells.index(k[1]) if cells and k[1] in cells else 99, k[1]))
    for env, cell in keys:
        if cells and cell not in cells:
            continue
        runs = [results[(env, cell)][seed] for seed in sorted(results[(env, cell)])]
        per_seed = ", ".join(f"{r['seed']}: {number(r['eval_return_mean'])}" for r in runs)
        lines.append(f"| {env} | {cell} | {len(runs)} | " +
                     " | ".join(spread([r.get(key) for r in runs]) for key, _ in COLUMNS) +
                     f" | {statistics.fmean(r['wall_seconds'] for r in runs) / 60:.1f} | "
                     f"{statistics.fmean(r['sps'] for r in runs):,.0f} | {per_seed} |")
    return "\n".join(lines)


def read_columns(path):
    """{column: [(step, value), ...]} from a result CSV, empty cells skipped."""
    columns = defaultdict(list)
    for row in results.read_csv(path):
        for key, value in row.items():
            if key != "step" and value is not None:
                columns[key].append((int(row["step"]), value))
    return columns


def window_mean(points, end, width):
    """Mean of the values logged at steps in (end - width, end]; None if there are none."""
    values = [value for step, value in points if end - width < step <= end]
    return statistics.fmean(values) if values else None


def stats_table(paths, tags, at, window, cells=None, seeds=None):
    header = "| env | cell | seed | statistic | " + " | ".join(f"at {fraction:.0%}" for fraction in at) + " |"
    lines = [header, "|---|---|---|---|" + "---|" * len(at)]
    for (env, cell), runs in sorted(collect(paths, seeds).items()):
        if cells and cell not in cells:
            continue
        for seed, summary in sorted(runs.items()):
            folder = Path(summary["_path"]).parent
            if not (folder / "stats.csv").exists():
                continue
            columns = {**read_columns(folder / "stats.csv"), **read_columns(folder / "curve.csv")}
            total = summary["total_timesteps"]
            for tag in ("eval_return", *tags):
                points = columns.get(tag, [])
                if not points:  # a tag of the other algorithm
                    continue
                values = [window_mean(points, fraction * total, window * total) for fraction in at]
                lines.append(f"| {env} | {cell} | {seed} | {tag} | " +
                             " | ".join("-" if v is None else f"{v:.4g}" for v in values) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--cells", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--stats", nargs="+", metavar="TAG", help="per-run statistics from stats.csv instead")
    parser.add_argument("--at", nargs="+", type=float, default=[0.1, 0.25, 0.5, 0.75, 1.0],
                        help="--stats: points, as fractions of the run")
    parser.add_argument("--window", type=float, default=0.05, help="--stats: averaging window, as a fraction")
    args = parser.parse_args()
    seeds = set(args.seeds) if args.seeds else None
    if args.stats:
        print(stats_table(args.paths, args.stats, args.at, args.window, args.cells, seeds))
    else:
        print(table(collect(args.paths, seeds), args.cells))


if __name__ == "__main__":
    main()
