"""`python -m rl.tune`: search spaces and their refusals, a tiny study end to end, pruning, a study that survives
kill -9 of its tuner, two tuners on one SQLite study, and best.yaml reproducing its trial bit for bit."""

import csv
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from rl import results, tune

pytestmark = pytest.mark.slow  # studies of real training runs; the full suite (README, CI) runs them
REPO = Path(__file__).resolve().parent.parent
# Trials of 4 PPO iterations on CartPole (CartPole's search space keeps rollouts short), evaluated every 2.
TRIAL = ["algo=ppo", "env=CartPole-v1", "total_timesteps=2048", "eval_every=2", "eval_episodes=2"]


def write_space(path, text):
    path.write_text(text)
    return path


def refusal(tmp_path, text, algo="ppo"):
    with pytest.raises(tune.TuneError) as refused:
        tune.load_space(write_space(tmp_path / "space.yaml", text), algo, "CartPole-v1")
    assert "\n" not in str(refused.value)
    return str(refused.value)


def test_space_reads_distributions_and_the_envs_own_keys(tmp_path):
    space = tune.load_space(write_space(tmp_path / "s.yaml", """
space:
  algo.learning_rate: {log_uniform: [1.0e-5, 1.0e-2]}
  algo.update_epochs: {int: [3, 10]}
  algo.clip_coef: {categorical: [0.1, 0.2]}
envs:
  CartPole-v1:
    algo.update_epochs: {int: [1, 2]}
"""), "ppo", "CartPole-v1")
    assert space == {"algo.learning_rate": ("log_uniform", [1e-5, 1e-2]), "algo.update_epochs": ("int", [1, 2]),
                     "algo.clip_coef": ("categorical", [0.1, 0.2])}
    values = tune.suggest(optuna.trial.FixedTrial({"algo.learning_rate": 3e-4, "algo.update_epochs": 2,
                                                  "algo.clip_coef": 0.2}), space)
    assert values == {"algo.learning_rate": 3e-4, "algo.update_epochs": 2, "algo.clip_coef": 0.2}


def test_bad_spaces_are_refused_in_one_line_naming_the_key(tmp_path):
    assert "algo.nosuch: not a key a ppo run reads" in refusal(tmp_path, "space:\n  algo.nosuch: {uniform: [0, 1]}\n")
    assert "algo.max_kl: not a key a ppo run reads" in refusal(tmp_path, "space:\n  algo.max_kl: {uniform: [0, 1]}\n")
    assert "low < high" in refusal(tmp_path, "space:\n  algo.clip_coef: {uniform: [0.5, 0.1]}\n")
    assert "low > 0" in refusal(tmp_path, "space:\n  algo.learning_rate: {log_uniform: [0, 0.1]}\n")
    assert "(integers)" in refusal(tmp_path, "space:\n  algo.update_epochs: {int: [1.5, 4]}\n")
    assert "non-empty list" in refusal(tmp_path, "space:\n  algo.clip_coef: {categorical: []}\n")
    assert "give one of" in refusal(tmp_path, "space:\n  algo.clip_coef: {normal: [0, 1]}\n")
    assert "needs a `space:` mapping" in refusal(tmp_path, "algo.clip_coef: 1\n")


def test_shipped_spaces_are_valid_for_their_algorithms():
    for algo in ("ppo", "trpo", "npg"):
        for env_id in ("CartPole-v1", "Hopper-v4"):
            assert tune.load_space(REPO / "configs" / "search" / f"{algo}.yaml", algo, env_id)


def test_options_and_train_overrides_are_told_apart():
    options, overrides = tune.parse_arguments(["study=s", "trials=5", "algo=trpo", "algo.max_kl=0.02", "jobs=1"])
    assert options["study"] == "s" and options["trials"] == 5 and overrides == ["algo=trpo", "algo.max_kl=0.02"]
    for bad, text in ((["trials=5"], "study=<name>"), (["study=a b"], "study=a b"), (["study=s", "jobs=999"], "jobs"),
                      (["study=s", "pruner=magic"], "pruner"), (["study=s", "confirm_seeds=3"], "confirm_seeds")):
        with pytest.raises(tune.TuneError, match=text):
            tune.parse_arguments(bad)


def test_a_trial_the_pruner_stops_ends_early_with_a_checkpoint(tmp_path):
    reports = []

    def report(value, step, total):
        reports.append((value, step, total))
        return step >= 1024  # "worse than the median" at its second evaluation

    run_dir = tmp_path / "pruned"
    ended = tune.run_trial(run_dir, [*TRIAL[:2], "total_timesteps=20480", "eval_every=2", "eval_episodes=2"], report)
    assert ended is None and [step for _, step, _ in reports] == [512, 1024]
    assert {total for _, _, total in reports} == {20480}  # read from the run's start banner
    state = results.scalars(run_dir)["eval/return"]
    assert [step for step, _ in state] == [512, 1024]  # the values reported are the run's own evaluations
    assert [value for value, _, _ in reports] == pytest.approx([value for _, value in state], abs=0.05)
    saved_step = int((run_dir / "checkpoints" / "latest").read_text().strip()[len("step_"):-len(".pt")])
    assert 1024 <= saved_step < 20480  # stopped at the iteration after the report, with a checkpoint
    assert not (run_dir / "summary.json").exists()  # stopped, not finished: resumable


def test_no_trial_is_pruned_in_the_warm_up_share_of_its_steps():
    # 100,000 steps, prune_after=0.3: the evaluations at 20k and 29,999 steps are not judged, 30k on are.
    assert [tune.past_warm_up(step, 100000, 0.3) for step in (20000, 29999, 30000, 90000)] == [False, False, True, True]
    assert tune.past_warm_up(512, 2048, 0.0)  # prune_after=0: judged from the first evaluation
    options, _ = tune.parse_arguments(["study=s", "prune_after=0.5"])
    assert options["prune_after"] == 0.5 and tune.parse_arguments(["study=s"])[0]["prune_after"] == 0.3
    with pytest.raises(tune.TuneError, match="prune_after"):
        tune.parse_arguments(["study=s", "prune_after=1.0"])


def finished(study_dir):
    with open(study_dir / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_runs_reports_and_its_best_yaml_reproduces_the_trial_bit_for_bit(tmp_path):
    done = results.run([sys.executable, "-m", "rl.tune", *TRIAL, "study=tiny", "trials=3",
                        f"studies_dir={tmp_path}"], cwd=REPO, timeout=1200, check=True)
    study_dir = tmp_path / "tiny"
    rows = finished(study_dir)
    assert len(rows) == 3 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert len({r["seed"] for r in rows}) == 3  # a seed of its own for every trial
    assert "study tiny: 3 trials" in done.stdout and (study_dir / "history.png").exists()
    best_text = (study_dir / "best.yaml").read_text()
    assert best_text.startswith("# @package _global_\n")
    best = yaml.safe_load(best_text)
    shipped = yaml.safe_load((REPO / "configs" / "tuned" / "ppo_CartPole-v1.yaml").read_text())
    # A whole recipe: the shipped file's keys the search left alone are kept (the budget, the envs, ...).
    assert best["env"] == shipped["env"] and best["total_timesteps"] == shipped["total_timesteps"]
    assert best["algo"]["clip_value_loss"] == shipped["algo"]["clip_value_loss"]  # not in the search space
    number = int(best_text.split(", trial ")[1].split(",")[0])
    seed = next(r["seed"] for r in rows if int(r["number"]) == number)
    (tmp_path / "mine" / "tuned").mkdir(parents=True)
    (tmp_path / "mine" / "tuned" / "best.yaml").write_text(best_text)  # in place of the shipped file
    again = tmp_path / "again"
    # Hydra's options come before the overrides.
    results.train(again, f"--config-dir={tmp_path / 'mine'}", *TRIAL, "tuned=best", f"seed={seed}", cwd=REPO,
                  timeout=1200)
    assert results.scalars(again) == results.scalars(study_dir / f"trial_{number}")


def trial_states(study_dir):
    with sqlite3.connect(study_dir / "study.db") as db:
        return [state for (state,) in db.execute("select state from trials order by number")]


def test_kill_9_of_the_tuner_loses_no_trial_and_counts_none_twice(tmp_path):
    argv = [sys.executable, "-m", "rl.tune", "algo=ppo", "env=CartPole-v1", "total_timesteps=8192", "eval_every=4",
            "eval_episodes=2", "study=killed", "trials=3", f"studies_dir={tmp_path}"]
    study_dir = tmp_path / "killed"
    tuner = results.start(argv, cwd=REPO)
    deadline = time.monotonic() + 900
    while not (study_dir / "trial_1" / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
        assert tuner.poll() is None, tuner.communicate()
        time.sleep(0.2)
    os.kill(tuner.pid, signal.SIGKILL)  # mid-trial 1
    tuner.wait()
    time.sleep(tune.GRACE_SECONDS + 5)  # its heartbeat goes stale
    results.run(argv, cwd=REPO, timeout=1200, check=True)
    states = trial_states(study_dir)
    assert states.count("FAIL") == 1, states  # the killed trial, failed and tried again
    assert states.count("COMPLETE") + states.count("PRUNED") == 3, states
    assert "RUNNING" not in states


def test_two_tuners_share_one_sqlite_study(tmp_path):
    argv = [sys.executable, "-m", "rl.tune", *TRIAL, "study=shared", "trials=4", f"studies_dir={tmp_path}"]
    tuners = [results.start(argv, cwd=REPO) for _ in range(2)]
    outputs = [tuner.communicate(timeout=1200) for tuner in tuners]
    assert all(t.returncode == 0 for t in tuners), [err[-2000:] for _, err in outputs]
    states = trial_states(tmp_path / "shared")
    # Each tuner stops once 4 are finished; a trial the other had already started still finishes.
    assert 4 <= states.count("COMPLETE") + states.count("PRUNED") <= 5 and "FAIL" not in states, states
    assert len(list((tmp_path / "shared").glob("trial_*"))) == len(states)


def test_a_finished_study_confirms_its_best_on_held_out_seeds_at_the_budget_of_the_call(tmp_path):
    search = [a for a in TRIAL if not a.startswith("total_timesteps=")]
    results.run([sys.executable, "-m", "rl.tune", *search, "total_timesteps=2048", "study=c", "trials=2",
                 "pruner=none", f"studies_dir={tmp_path}"], cwd=REPO, timeout=1200, check=True)
    study_dir = tmp_path / "c"
    objectives = {int(r["number"]): float(r["objective"]) for r in finished(study_dir)}
    done = results.run([sys.executable, "-m", "rl.tune", *search, "total_timesteps=4096", "study=c", "trials=2",
                        "confirm_seeds=[101,102]", "confirm_top=2", "jobs=2", f"studies_dir={tmp_path}"],
                       cwd=REPO, timeout=1200, check=True)
    assert trial_states(study_dir) == ["COMPLETE", "COMPLETE"]  # no trial started by the second call
    with open(study_dir / "confirm.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["trial"]) for r in rows) == sorted(objectives)
    means = []
    for row in rows:
        finals = []
        for seed in (101, 102):
            summary = results.summary(study_dir / "confirm" / f"trial_{row['trial']}_seed{seed}")
            assert summary["seed"] == seed and summary["total_timesteps"] == 4096  # this call's budget
            finals.append(summary["eval_return_mean"])
            assert float(row[str(seed)]) == pytest.approx(summary["eval_return_mean"], rel=1e-5)
        assert float(row["confirm_mean"]) == pytest.approx(sum(finals) / 2, rel=1e-5)
        means.append((sum(finals) / 2, int(row["trial"])))
    best_text = (study_dir / "best.yaml").read_text()
    named = int(best_text.split(", trial ")[1].split(",")[0])
    assert dict((t, m) for m, t in means)[named] == max(means)[0] and "held-out seeds [101, 102]" in best_text
    trial_again, confirmation = [line for line in best_text.splitlines()
                                 if line.startswith(("# The trial again:", "# Its confirmation"))]
    assert "total_timesteps=2048" in trial_again and "total_timesteps=4096" not in trial_again  # as it ran
    assert "total_timesteps=4096" in confirmation and "study c: 2 trials" in done.stdout
