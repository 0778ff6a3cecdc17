"""Runs as child processes, and what their folders hold: the one launcher scripts and tests share.

`train_command` / `run` / `start` launch `python -m rl.train` (or torchrun over it); `scalars`, `curve` and
`stats` read back what a run logged to TensorBoard; `write_csv` / `read_csv` keep the compact results the
benchmark runner commits. Nothing here imports the training code, so reading results stays cheap.
"""

import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# Tags whose values depend on the machine's speed, not on the run's math.
WALL_CLOCK_TAGS = ("charts/sps", "time/")
CURVE_COLUMNS = ("step", "train_return", "eval_return", "eval_return_std", "train_length", "eval_length")
# What an update logs that explains a curve: the policy's entropy and how far each update moved it, how well
# CG solved for the direction, how well the critic fits.
STATS_TAGS = ("losses/entropy", "losses/explained_variance", "losses/value_loss", "losses/approx_kl",
              "losses/clipfrac", "trpo/kl", "trpo/kl_from_std", "trpo/cg_residual", "trpo/cg_relative_residual",
              "trpo/line_search_steps", "trpo/step_norm")


def train_command(run_dir, *overrides, torchrun=None):
    """argv of `python -m rl.train [overrides]` writing to `run_dir` (None: Hydra's choice, e.g. for
    `resume=`), without a progress bar; `torchrun=[...]` runs it under torch.distributed.run with those
    launcher arguments."""
    launcher = [sys.executable, "-m", "torch.distributed.run", *torchrun] if torchrun is not None else \
        [sys.executable]
    where = [] if run_dir is None else [f"hydra.run.dir={run_dir}"]
    return [*launcher, "-m", "rl.train", *overrides, "progress=false", *where]


def _environment(extra):
    # Unbuffered, so a test that reads a child's output while it runs sees each line when it is printed.
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def run(argv, cwd=None, env=None, timeout=None, check=False, **kwargs):
    """Run `argv` to its end and capture its output; `env` adds variables to this process's. With `check`, a
    non-zero exit raises RuntimeError carrying the end of stderr."""
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=_environment(env), **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv[1:]))} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def start(argv, cwd=None, env=None, **kwargs):
    """Start `argv` without waiting (a test then interrupts or waits for it); output is piped, as text."""
    return subprocess.Popen(argv, cwd=cwd, env=_environment(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def train(run_dir, *overrides, cwd=None, env=None, timeout=None, check=True, torchrun=None):
    """`python -m rl.train` to its end; returns the CompletedProcess (raises on failure unless check=False)."""
    return run(train_command(run_dir, *overrides, torchrun=torchrun), cwd=cwd, env=env, timeout=timeout,
               check=check)


def summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


def events(run_dir):
    """The run's TensorBoard events, loaded whole (scalars and tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    old_layout = Path(run_dir) / "tensorboard"  # runs made before event files moved to the run folder
    accumulator = EventAccumulator(str(old_layout if old_layout.is_dir() else run_dir),
                                   size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(run_dir, wall_clock=False):
    """{tag: [(step, value), ...]} of every logged scalar; wall-clock tags only with `wall_clock`."""
    loaded = events(run_dir)
    return {tag: [(e.step, e.value) for e in loaded.Scalars(tag)] for tag in loaded.Tags()["scalars"]
            if wall_clock or not tag.startswith(WALL_CLOCK_TAGS)}


def values(run_dir, *tags):
    """For each tag, its logged values in order ([] if the run never logged it), read in one pass."""
    logged = scalars(run_dir, wall_clock=True)
    return [[value for _, value in logged.get(tag, [])] for tag in tags]


def _per_step(pairs):
    """{step: mean of the values logged at that step}."""
    grouped = defaultdict(list)
    for step, value in pairs:
        grouped[step].append(value)
    return {step: sum(v) / len(v) for step, v in grouped.items()}


def curve(run_dir):
    """Rows of CURVE_COLUMNS: per logged step, the mean return of the training episodes that ended there,
    and the evaluation at that step if there was one."""
    logged = scalars(run_dir)
    train_return, train_length, eval_return, eval_std, eval_length = (
        _per_step(logged.get(tag, [])) for tag in ("charts/episodic_return", "charts/episodic_length",
                                                  "eval/return", "eval/return_std", "eval/length"))
    return [{"step": step, "train_return": train_return.get(step, ""), "eval_return": eval_return.get(step, ""),
             "eval_return_std": eval_std.get(step, ""), "train_length": train_length.get(step, ""),
             "eval_length": eval_length.get(step, "")}
            for step in sorted(set(train_return) | set(eval_return))]


def stats(run_dir, wanted=STATS_TAGS):
    """(columns, rows): per logged step, the `wanted` tags this run logged."""
    logged = scalars(run_dir)
    tags = [tag for tag in wanted if tag in logged]
    by_step = defaultdict(dict)
    for tag in tags:
        for step, value in logged[tag]:
            by_step[step][tag] = value
    return ("step", *tags), [{"step": step, **by_step[step]} for step in sorted(by_step)]


def write_csv(path, rows, columns=CURVE_COLUMNS):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _compact(row.get(key, "")) for key in columns})


def _compact(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def read_csv(path):
    """CSV rows as dicts of floats (None where a column is empty)."""
    with open(path, newline="") as f:
        return [{key: (float(value) if value != "" else None) for key, value in row.items()}
                for row in csv.DictReader(f)]
