"""Hyperparameter search on Optuna: `python -m rl.tune algo=ppo env=Pendulum-v1 study=<name> [key=value ...]`.

    python -m rl.tune algo=ppo env=Pendulum-v1 study=pendulum trials=40 jobs=2 total_timesteps=100000
    python -m rl.tune algo=ppo env=Pendulum-v1 study=pendulum            # the same study again: it continues
    python -m rl.tune ... study=shared storage=postgresql://host/db      # several machines on one study

Tune's own keys: study (its name, required), trials (finished trials the study ends with, default 20),
jobs (trials at once on this machine, default 1, at most the cores), storage (an Optuna storage URL; default
an SQLite file in the study's folder), pruner (median, halving or none; default median), prune_after (the
share of a trial's steps before the pruner may stop it, default 0.3: early curves rank configs by noise), last (the
objective is the mean of a trial's last `last` evaluations, default 3), confirm_seeds (held-out seeds the
best configs are run again on, e.g. [101,102,103], `jobs` runs at once; default none), confirm_top (how many, default 3),
studies_dir (default runs/studies), space (the search space file; default configs/search/<algo>.yaml).
Every other key=value is an rl.train override for every trial. Run again on a finished study, rl.tune starts no
trial and confirms with this call's overrides: `total_timesteps=1000000 confirm_seeds=[...]` confirms a search
made at a cheaper budget at the full one.

Each trial is a real `python -m rl.train` run in <studies_dir>/<study>/trial_<number>/ with the composed
config plus the trial's values and a seed the study draws for it (recorded as the trial's user attribute).
Its evaluation points are reported to Optuna as they are printed, so the pruner can stop it (SIGINT: it
ends with a checkpoint). A trial whose tuner was killed stops with it and is marked failed once its heartbeat
is stale, then tried again; only finished trials (complete or pruned) count. Out, in the study's folder:
best.yaml (a whole configs/tuned/<algo>_<env>.yaml: the shipped one with the best trial's values over it),
trials.csv, confirm.csv with confirm_seeds, and optuna's plots (with matplotlib). Refusals (an unknown key in
the space, an impossible range, a study of this name with another space, an unreachable storage) are one
line, exit 2.
"""

import csv
import ctypes
import fcntl
import json
import os
import random
import re
import signal
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from rl import results
from rl.evaluate import EvaluateError, checked_value

REPO = Path(__file__).resolve().parent.parent
OPTIONS = {  # key -> (default, check, what it must be)
    "study": (None, lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", v) is not None,
              "a name of letters, digits, '_', '.', '-'"),
    "trials": (20, lambda v: _integer(v) and v >= 1, "a positive integer"),
    "jobs": (1, lambda v: _integer(v) and 1 <= v <= (os.cpu_count() or 1), f"1 to {os.cpu_count()} (the cores)"),
    "storage": (None, lambda v: v is None or isinstance(v, str), "an Optuna storage URL"),
    "pruner": ("median", lambda v: v in ("median", "halving", "none"), "median, halving or none"),
    "prune_after": (0.3, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                    "a share of the trial's steps, from 0 to below 1"),
    "last": (3, lambda v: _integer(v) and v >= 1, "a positive integer"),
    "confirm_seeds": ([], lambda v: isinstance(v, list) and all(_integer(s) and s >= 0 for s in v),
                      "a list of seeds, e.g. [101,102,103]"),
    "confirm_top": (3, lambda v: _integer(v) and v >= 1, "a positive integer"),
    "studies_dir": ("runs/studies", lambda v: isinstance(v, str) and v != "", "a folder"),
    "space": (None, lambda v: v is None or isinstance(v, str), "a search space file"),
}
DISTRIBUTIONS = ("log_uniform", "uniform", "int", "categorical")
EVAL_LINE = re.compile(r"^eval return (-?[\d.]+) \+/- [\d.]+ at step (\d+)$")
BUDGET_LINE = re.compile(r"\b\d+ iterations = (\d+) steps\b")  # the start banner's budget
HEARTBEAT_SECONDS, GRACE_SECONDS = 5, 20  # a trial whose tuner is gone this long is failed and tried again


class TuneError(Exception):
    """A bad option, search space or storage; the message is one line."""


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def parse_arguments(arguments):
    """(tune options, rl.train overrides) from key=value arguments."""
    options = {key: default for key, (default, _, _) in OPTIONS.items()}
    overrides = []
    for argument in arguments:
        key, equals, text = argument.partition("=")
        if not equals:
            raise TuneError(f"{argument}: expected key=value")
        if key not in OPTIONS:
            overrides.append(argument)
            continue
        try:
            options[key] = checked_value(OPTIONS, key, text)
        except EvaluateError as error:
            raise TuneError(str(error)) from None
    if options["study"] is None:
        raise TuneError("study=<name>: every search has a name (its folder and its storage's study)")
    return options, overrides


def chosen(overrides, key, default):
    """The value an override list gives `key` (the last one wins, as in Hydra), else `default`."""
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
    return values[-1] if values else default


def load_space(path, algo, env_id):
    """{dotted key: (distribution, arguments)} for this algo and env: the file's `space`, then `envs.<env id>`
    over it. Refuses keys a run of `algo` does not read and impossible ranges."""
    from rl.config import keys_of

    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise TuneError(f"space={path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("space"), dict):
        raise TuneError(f"space={path}: needs a `space:` mapping of key -> distribution")
    entries = {**document["space"], **((document.get("envs") or {}).get(env_id) or {})}
    known = set(keys_of(algo))
    space = {}
    for key, spec in entries.items():
        if key not in known:
            raise TuneError(f"{path}: {key}: not a key a {algo} run reads")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise TuneError(f"{path}: {key}: give one of {', '.join(DISTRIBUTIONS)}, e.g. {{uniform: [0.1, 0.3]}}")
        kind, arguments = next(iter(spec.items()))
        if kind == "categorical":
            if not isinstance(arguments, list) or not arguments:
                raise TuneError(f"{path}: {key}: categorical needs a non-empty list of choices")
        else:
            numbers = isinstance(arguments, list) and len(arguments) == 2 and all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in arguments)
            if not numbers or not arguments[0] < arguments[1] or (kind == "int" and not all(map(_integer, arguments))) \
                    or (kind == "log_uniform" and arguments[0] <= 0):
                raise TuneError(f"{path}: {key}: {kind} needs [low, high] with low < high"
                                f"{' and low > 0' if kind == 'log_uniform' else ''}"
                                f"{' (integers)' if kind == 'int' else ''}, got {arguments}")
        space[key] = (kind, arguments)
    if not space:
        raise TuneError(f"space={path}: nothing to search")
    return space


def suggest(trial, space):
    """The trial's value for each key of the space."""
    values = {}
    for key, (kind, arguments) in space.items():
        if kind == "categorical":
            values[key] = trial.suggest_categorical(key, arguments)
        elif kind == "int":
            values[key] = trial.suggest_int(key, *arguments)
        else:
            values[key] = trial.suggest_float(key, float(arguments[0]), float(arguments[1]),
                                              log=kind == "log_uniform")
    return values


def trial_seed(study_name, number):
    """The seed the study draws for trial `number`: fixed by the two, different for every trial."""
    return random.Random(f"{study_name}/{number}").randrange(1, 2**31 - 1)


def trial_overrides(overrides, values, seed):
    return [*overrides, *(f"{key}={value}" for key, value in values.items()), f"seed={seed}"]


def _die_with_parent():
    """In the trial's process: SIGTERM it when the tuner dies (kill -9 included), so it stops with a checkpoint."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_trial(run_dir, argv, report):
    """Run one rl.train to its end, calling report(value, step, total steps) at each evaluation it prints; when
    that returns True, stop it (SIGINT) and return None. Otherwise returns (return code, stderr's end)."""
    process = results.start(results.train_command(run_dir, *argv), cwd=REPO, preexec_fn=_die_with_parent)
    errors = []
    drain = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
    drain.start()
    pruned, total = False, None
    for line in process.stdout:
        budget = BUDGET_LINE.search(line) if total is None else None
        total = int(budget.group(1)) if budget else total
        match = EVAL_LINE.match(line.strip())
        if match and not pruned and report(float(match.group(1)), int(match.group(2)), total):
            pruned = True
            process.send_signal(signal.SIGINT)
    process.wait()
    drain.join()
    return None if pruned else (process.returncode, "".join(errors)[-2000:])


def objective_of(run_dir, last):
    """The mean of the run's last `last` evaluation points (TensorBoard, full precision)."""
    (evaluations,) = results.values(run_dir, "eval/return")
    if not evaluations:
        raise TuneError(f"{run_dir}: the trial logged no evaluation (eval_episodes=0?)")
    return sum(evaluations[-last:]) / len(evaluations[-last:])


def past_warm_up(step, total, share):
    """Whether a trial at `step` of `total` may be pruned: not in its first `share` of steps (the RL Zoo waits a
    third of the evaluations), where every config's return is still near its initial policy's."""
    return total is None or step >= share * total


def make_pruner(name):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(options, space, study_dir):
    """Create the study, or join the one of this name (which must have the same search space)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = options["storage"] or f"sqlite:///{study_dir / 'study.db'}"
    # Two tuners starting at once would both create the schema of a new database: one at a time on this machine.
    with open(study_dir / ".opening.lock", "w") as opening:
        fcntl.flock(opening, fcntl.LOCK_EX)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: in use for years
                storage = RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
            study = optuna.create_study(study_name=options["study"], storage=storage, direction="maximize",
                                        pruner=make_pruner(options["pruner"]), load_if_exists=True,
                                        sampler=optuna.samplers.TPESampler())  # each process its own draws
        except Exception as error:  # noqa: BLE001 (sqlalchemy's and the drivers' errors, whatever they are)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TuneError(f"storage={url}: cannot be opened ({first[:200]})") from None
        described = json.dumps({key: [kind, arguments] for key, (kind, arguments) in space.items()}, sort_keys=True)
        saved = study.user_attrs.get("space")
        if saved is None:
            study.set_user_attr("space", described)
        elif saved != described:
            raise TuneError(f"study={options['study']}: exists in {url} with another search space; choose another "
                            "name")
    return study


def nested(values):
    """{"algo.learning_rate": 1e-3} -> {"algo": {"learning_rate": 1e-3}}."""
    tree = {}
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def merged(base, values):
    """`values` (nested dicts) written over a copy of `base`, key by key."""
    tree = dict(base)
    for key, value in values.items():
        tree[key] = merged(tree[key], value) if isinstance(value, dict) and isinstance(tree.get(key), dict) else value
    return tree


def write_best(study_dir, algo, env_name, trial, overrides, how, confirm_seeds):
    """best.yaml in the form of configs/tuned/<algo>_<env>.yaml: the shipped file's keys (which every trial ran
    on) with the trial's values over them, and how to reproduce the trial (with the overrides it ran with) and
    its confirmation runs (with this call's)."""
    seed = trial.user_attrs["seed"]
    ran_with = trial.user_attrs.get("overrides", overrides)  # studies before the attribute: this call's
    name = f"{algo}_{env_name}"
    shipped = REPO / "configs" / "tuned" / f"{name}.yaml"
    base = (yaml.safe_load(shipped.read_text()) or {}) if shipped.exists() else {}
    header = (f"# @package _global_\n# {algo} on {env_name}: tuned by python -m rl.tune ({how}), trial "
              f"{trial.number}, objective {trial.value:.6g}, seed {seed}.\n# Use it as configs/tuned/{name}.yaml, or "
              f"from a folder of your own: python -m rl.train --config-dir <dir> tuned=<name> (<dir>/tuned/<name>.yaml"
              f").\n# The trial again: python -m rl.train {' '.join(trial_overrides(ran_with, trial.params, seed))}\n")
    if confirm_seeds:
        header += (f"# Its confirmation, on each of seeds {confirm_seeds}: python -m rl.train "
                   f"{' '.join(trial_overrides(overrides, trial.params, '<seed>'))}\n")
    (study_dir / "best.yaml").write_text(header + yaml.safe_dump(merged(base, nested(trial.params)), sort_keys=False))


def write_trials(study_dir, study):
    """trials.csv: every trial's state, objective, seed, last reported step and values."""
    keys = sorted({key for trial in study.trials for key in trial.params})
    with open(study_dir / "trials.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "objective", "seed", "last_step", *keys])
        for trial in study.trials:
            last_step = max(trial.intermediate_values) if trial.intermediate_values else ""
            writer.writerow([trial.number, trial.state.name, "" if trial.value is None else f"{trial.value:.6g}",
                             trial.user_attrs.get("seed", ""), last_step, *(trial.params.get(k, "") for k in keys)])


def write_plots(study_dir, study):
    """Optuna's history, importances and parallel coordinates, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from optuna.visualization import matplotlib as plots
    except ImportError:
        return []
    written = []
    for name, draw in (("history", plots.plot_optimization_history), ("importances", plots.plot_param_importances),
                       ("parallel", plots.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks these plots experimental
                axis = draw(study)
            figure = axis.figure if hasattr(axis, "figure") else axis.flat[0].figure
            figure.savefig(study_dir / f"{name}.png", dpi=100, bbox_inches="tight")
            matplotlib.pyplot.close(figure)
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials for this plot
            continue
    return written


def confirm(study_dir, study, options, overrides):
    """Run the best `confirm_top` complete trials again on the held-out seeds; rank them by that mean."""
    import optuna

    complete = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: t.value, reverse=True)[:options["confirm_top"]]

    def final_return(trial, seed):
        run_dir = study_dir / "confirm" / f"trial_{trial.number}_seed{seed}"
        if not (run_dir / "summary.json").exists():
            results.train(run_dir, *trial_overrides(overrides, trial.params, seed), cwd=REPO)
        return results.summary(run_dir)["eval_return_mean"]

    # `jobs` runs at once, as the search did: each is its own rl.train process, the threads only wait on them.
    with ThreadPoolExecutor(max_workers=options["jobs"]) as pool:
        futures = [[pool.submit(final_return, trial, seed) for seed in options["confirm_seeds"]] for trial in complete]
        finals_of = [[future.result() for future in row] for row in futures]
    rows = [(sum(finals) / len(finals), trial, finals) for trial, finals in zip(complete, finals_of)]
    rows.sort(key=lambda row: row[0], reverse=True)
    with open(study_dir / "confirm.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "trial", "search_objective", "confirm_mean", *map(str, options["confirm_seeds"])])
        for rank, (mean, trial, finals) in enumerate(rows, 1):
            writer.writerow([rank, trial.number, f"{trial.value:.6g}", f"{mean:.6g}", *(f"{v:.6g}" for v in finals)])
    return rows


def tune(options, overrides):
    try:
        import optuna
    except ImportError:
        raise TuneError('rl.tune needs Optuna: pip install -e ".[tune]"') from None

    algo = chosen(overrides, "algo", "ppo")
    env_name = chosen(overrides, "env", "CartPole-v1")
    env_id = chosen(overrides, "env.id", env_name)
    space = load_space(options["space"] or REPO / "configs" / "search" / f"{algo}.yaml", algo, env_id)
    study_dir = Path(options["studies_dir"]).resolve() / options["study"]
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(options, space, study_dir)
    last = options["last"]

    def objective(trial):
        seed = trial_seed(options["study"], trial.number)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("overrides", overrides)  # a later call may confirm at other ones
        values = suggest(trial, space)
        run_dir = study_dir / f"trial_{trial.number}"

        reported = []

        def report(value, step, total):
            reported.append(step)
            trial.report(value, step)
            return past_warm_up(step, total, options["prune_after"]) and trial.should_prune()

        ended = run_trial(run_dir, trial_overrides(overrides, values, seed), report)
        if ended is None:
            print(f"trial {trial.number}: pruned at step {reported[-1]}", flush=True)
            raise optuna.TrialPruned()
        code, errors = ended
        if code != 0:
            last_line = errors.strip().splitlines()[-1] if errors.strip() else ""
            print(f"trial {trial.number}: rl.train exited {code}: {last_line}", flush=True)
            raise TrialFailed(code)
        value = objective_of(run_dir, last)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        print(f"trial {trial.number}: objective {value:.2f} (seed {seed}; {shown})", flush=True)
        return value

    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if sum(t.state in counted for t in study.trials) < options["trials"]:
        study.optimize(objective, n_jobs=options["jobs"], catch=(TrialFailed,),
                       callbacks=[optuna.study.MaxTrialsCallback(options["trials"], states=counted)])
    write_trials(study_dir, study)
    finished = [t for t in study.trials if t.state in counted]
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TuneError(f"study={options['study']}: no trial completed ({len(finished)} pruned); see trials.csv")
    best, how = study.best_trial, "best search objective"
    if options["confirm_seeds"]:
        ranked = confirm(study_dir, study, options, overrides)
        best, how = ranked[0][1], f"best mean on held-out seeds {options['confirm_seeds']}"
    write_best(study_dir, algo, env_name, best, overrides, how, options["confirm_seeds"])
    plots = write_plots(study_dir, study)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in finished)
    print(f"study {options['study']}: {len(finished)} trials ({len(complete)} complete, {pruned} pruned); best trial "
          f"{best.number} (objective {best.value:.2f}, {how}) -> {study_dir / 'best.yaml'}"
          f"{'; plots: ' + ', '.join(plots) if plots else ''}", flush=True)
    return study_dir


class TrialFailed(Exception):
    """rl.train ended with an error: Optuna records the trial as failed and the study goes on."""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    try:
        options, overrides = parse_arguments(argv)
        tune(options, overrides)
    except TuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
