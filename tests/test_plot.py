"""scripts/plot.py: the statistics against direct computations, and PNGs from results and run folders."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rl import results
from tests import scripts_path

plot = scripts_path.script("plot")

REPO = Path(__file__).resolve().parent.parent


def test_mean_and_interval_against_a_direct_bootstrap():
    curves = np.array([[0.0, 10.0, 20.0], [2.0, 12.0, 26.0], [4.0, 20.0, 30.0]])
    mean, low, high = plot.mean_and_interval(curves, None, resamples=4000, seed=3)
    assert np.allclose(mean, curves.mean(axis=0))
    rng = np.random.default_rng(3)
    picks = rng.integers(0, 3, size=(4000, 3))
    means = np.array([[curves[p, g].mean() for g in range(3)] for p in picks])
    assert np.allclose(low, np.percentile(means, 2.5, axis=0)) and np.allclose(high, np.percentile(means, 97.5, axis=0))
    assert np.all(low <= mean) and np.all(mean <= high)
    assert np.all(low >= curves.min(axis=0)) and np.all(high <= curves.max(axis=0))
    same = np.tile([[1.0, 2.0]], (4, 1))  # identical seeds: no spread
    _, low, high = plot.mean_and_interval(same, None)
    assert np.array_equal(low, same[0]) and np.array_equal(high, same[0])


def test_seeds_are_interpolated_onto_the_steps_all_of_them_reached():
    first = (np.array([0.0, 10.0, 20.0, 30.0]), np.array([0.0, 1.0, 2.0, 3.0]))
    second = (np.array([5.0, 25.0]), np.array([10.0, 30.0]))
    grid, values = plot.aligned([first, second])
    assert grid.tolist() == [5.0, 10.0, 20.0, 25.0]
    assert values[0].tolist() == [0.5, 1.0, 2.0, 2.5]
    assert values[1].tolist() == [10.0, 15.0, 25.0, 30.0]


def test_training_curve_is_a_moving_average():
    rows = [{"step": float(s), "train_return": float(v), "eval_return": None} for s, v in
            zip(range(1, 7), [1, 2, 3, 4, 5, 6])]
    rows.insert(2, {"step": 2.5, "train_return": None, "eval_return": 9.0})  # no episode ended here
    steps, values = plot.series(rows, "train", smooth=3)
    assert steps.tolist() == [3.0, 4.0, 5.0, 6.0] and values.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert plot.series(rows, "eval", smooth=3)[1].tolist() == [9.0]


def write_result(root, env, cell, seed, rows):
    folder = root / env / cell / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"env": env, "algo": cell.split("-")[0], "cell": cell}))
    lines = ["step,train_return,eval_return,eval_return_std"] + [",".join(map(str, row)) for row in rows]
    (folder / "curve.csv").write_text("\n".join(lines) + "\n")


def test_plot_writes_a_png_with_a_panel_per_env_and_a_line_per_cell(tmp_path):
    for env in ("CartPole-v1", "Acrobot-v1"):
        for cell in ("ppo", "trpo-lead"):
            for seed in (1, 2):
                write_result(tmp_path / "results", env, cell, seed,
                             [(100 * i, 10 * i + seed, 11 * i if i % 2 == 0 else "", 1.0 if i % 2 == 0 else "")
                              for i in range(1, 7)])
    curves = plot.find_curves([tmp_path / "results"])
    assert set(curves) == {(e, c) for e in ("CartPole-v1", "Acrobot-v1") for c in ("ppo", "trpo-lead")}
    assert all(len(seeds) == 2 for seeds in curves.values())
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, str(scripts_path.SCRIPTS / "plot.py"), str(tmp_path / "results"),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_plot_reads_run_folders_through_their_tensorboard_files(tmp_path):
    run_dir = tmp_path / "runs" / "one"
    results.train(run_dir, "total_timesteps=1024", "eval_every=1", "eval_episodes=2", cwd=REPO, timeout=1200)
    curves = plot.find_curves([tmp_path / "runs"])
    assert list(curves) == [("CartPole-v1", "ppo")]
    (rows,) = curves[("CartPole-v1", "ppo")]
    assert [row["step"] for row in rows if row["eval_return"] is not None] == [256, 512, 768, 1024]
    out = tmp_path / "train.png"
    plot.plot(curves, out, metric="train", smooth=2)
    assert out.stat().st_size > 1000
