"""Learning curves over seeds: the mean and a 95% bootstrap interval, one panel per env, one line per cell.

    pip install -e ".[plot]"                                     # matplotlib
    python scripts/plot.py benchmarks/Hopper-v4 --out docs/hopper.png
    python scripts/plot.py benchmarks --cells trpo ppo sb3-trpo sb3-ppo --out docs/mujoco.png
    python scripts/plot.py runs/ --metric train --out runs.png   # plain run folders (TensorBoard files)

Inputs are searched recursively for benchmark results (<env>/<cell>/seed<k>/curve.csv with its
summary.json, as scripts/benchmark_returns.py writes them) and for run folders of `python -m rl.train`
(.hydra/config.yaml and TensorBoard event files; their cell is the algo name). `--metric eval` plots the deterministic
evaluations, `--metric train` the training episodes' returns, smoothed over `--smooth` logged points.
Seeds of a cell are put on one step grid by linear interpolation, inside the steps every seed reached.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from rl import results


def find_curves(paths):
    """{(env, cell): [rows of one seed, ...]} from benchmark result folders and run folders."""
    curves = defaultdict(list)
    for root in paths:
        root = Path(root)
        for csv_path in sorted(root.rglob("curve.csv")):
            summary_path = csv_path.parent / "summary.json"
            if summary_path.exists():
                summary = json.loads(summary_path.read_text())
                curves[(summary["env"], summary.get("cell", summary["algo"]))].append(results.read_csv(csv_path))
        for config_path in sorted(root.rglob(".hydra/config.yaml")):
            run_dir = config_path.parent.parent
            if (run_dir / "curve.csv").exists() or not (any(run_dir.glob("events.out.tfevents.*")) or
                                                         (run_dir / "tensorboard").is_dir()):
                continue
            from omegaconf import OmegaConf

            config = OmegaConf.load(config_path)
            curves[(config.env.id, config.algo.name)].append(
                [{k: (None if v == "" else v) for k, v in row.items()} for row in results.curve(run_dir)])
    return curves


def series(rows, metric, smooth):
    """(steps, values) of one seed for `metric`."""
    column = "eval_return" if metric == "eval" else "train_return"
    points = [(row["step"], row[column]) for row in rows if row[column] is not None]
    steps = np.array([p[0] for p in points], dtype=float)
    values = np.array([p[1] for p in points], dtype=float)
    if metric == "train" and smooth > 1 and len(values):
        kernel = np.ones(min(smooth, len(values)))
        values = np.convolve(values, kernel, "valid") / kernel.size
        steps = steps[kernel.size - 1:]
    return steps, values


def mean_and_interval(curves, grid, resamples=2000, seed=0):
    """Mean over seeds at each grid step and the 2.5 / 97.5 percentiles of bootstrap means. curves: (S, G)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, curves.shape[0], size=(resamples, curves.shape[0]))
    means = curves[picks].mean(axis=1)  # (resamples, G)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return curves.mean(axis=0), low, high


def aligned(seed_curves, points=200):
    """Interpolate every seed onto one grid inside the steps all of them reached -> (grid, (S, G))."""
    seed_curves = [(s, v) for s, v in seed_curves if len(s)]
    start = max(s[0] for s, _ in seed_curves)
    end = min(s[-1] for s, _ in seed_curves)
    grid = np.unique(np.concatenate([s[(s >= start) & (s <= end)] for s, _ in seed_curves]))
    if len(grid) > points:
        grid = np.linspace(start, end, points)
    return grid, np.stack([np.interp(grid, s, v) for s, v in seed_curves])


def plot(curves, out, metric="eval", smooth=10, cells=None, title=None, columns=3):
    """One panel per env, `columns` panels a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({env for env, cell in curves if not cells or cell in cells})  # envs with a wanted cell
    if not envs:
        raise SystemExit("error: no curves found (curve.csv with summary.json, or run folders)")
    columns = min(len(envs), columns)
    rows = -(-len(envs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(max(7.5, 5.5 * columns), 4.3 * rows), squeeze=False)
    for axis in axes.flat[len(envs):]:
        axis.set_visible(False)
    for axis, env in zip(axes.flat, envs):
        names = [c for env_, c in curves if env_ == env]
        for cell in (cells or sorted(names)):
            if (env, cell) not in curves:
                continue
            grid, values = aligned([series(rows, metric, smooth) for rows in curves[(env, cell)]])
            mean, low, high = mean_and_interval(values, grid)
            (line,) = axis.plot(grid, mean, label=f"{cell} ({values.shape[0]} seeds)")
            axis.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        axis.set_title(env)
        axis.set_xlabel("env steps")
        axis.set_ylabel("evaluation return (deterministic)" if metric == "eval" else "training episode return")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="benchmark result folders and/or run folders")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--metric", choices=["eval", "train"], default="eval")
    parser.add_argument("--smooth", type=int, default=10, help="train metric: moving average over this many points")
    parser.add_argument("--cells", nargs="+", help="only these cells (algos), in this order")
    parser.add_argument("--title")
    parser.add_argument("--columns", type=int, default=3, help="panels per row")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit('error: plotting needs matplotlib: pip install -e ".[plot]"') from None
    plot(find_curves(args.paths), args.out, args.metric, args.smooth, args.cells, args.title, args.columns)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
