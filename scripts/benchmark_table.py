"""Markdown tables from benchmark results: per (env, cell), the mean +/- std over seeds.

    python scripts/benchmark_table.py benchmarks/Hopper-v4 [--cells trpo ppo sb3-trpo] [--seeds 1 2 3]

Reads <env>/<cell>/seed<k>/summary.json as scripts/benchmark_returns.py writes them. Columns: the final
deterministic evaluation, the mean of the last 5 evaluation points, the best evaluation, the mean return of
the last 100 training episodes, wall time and SPS; each as mean +/- standard deviation over the seeds
(population std), with the per-seed final evaluations listed.
"""

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

COLUMNS = (("eval_return_mean", "final eval"), ("eval_return_last5_mean", "last-5 eval"),
           ("best_eval_return_mean", "best eval"), ("train_return_mean_last100", "train last-100"))


def collect(paths, seeds=None):
    """{(env, cell): {seed: summary}} from result folders."""
    results = defaultdict(dict)
    for root in paths:
        for path in sorted(Path(root).rglob("summary.json")):
            summary = json.loads(path.read_text())
            if "cell" not in summary or (seeds and summary["seed"] not in seeds):
                continue
            results[(summary["env"], summary["cell"])][summary["seed"]] = summary
    return results


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:,.0f} +/- {statistics.pstdev(values):,.0f}" if len(values) > 1 else f"{mean:,.0f}"


def table(results, cells=None):
    lines = ["| env | cell | seeds | " + " | ".join(name for _, name in COLUMNS) +
             " | wall min | SPS | final eval per seed |",
             "|---|---|---|" + "---|" * (len(COLUMNS) + 3)]
    keys = sorted(results, key=lambda k: (k[0], cells.index(k[1]) if cells and k[1] in cells else 99, k[1]))
    for env, cell in keys:
        if cells and cell not in cells:
            continue
        runs = [results[(env, cell)][seed] for seed in sorted(results[(env, cell)])]
        per_seed = ", ".join(f"{r['seed']}: {r['eval_return_mean']:,.0f}" for r in runs)
        lines.append(f"| {env} | {cell} | {len(runs)} | " +
                     " | ".join(spread([r.get(key) for r in runs]) for key, _ in COLUMNS) +
                     f" | {statistics.fmean(r['wall_seconds'] for r in runs) / 60:.1f} | "
                     f"{statistics.fmean(r['sps'] for r in runs):,.0f} | {per_seed} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--cells", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int)
    args = parser.parse_args()
    print(table(collect(args.paths, set(args.seeds) if args.seeds else None), args.cells))


if __name__ == "__main__":
    main()
