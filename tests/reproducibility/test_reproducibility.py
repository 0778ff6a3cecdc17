"""The reproducibility promise (README, "Reproducibility"), checked on CartPole-v1 with real processes.

1. same config + seed: bit-identical scalars (all but wall-clock ones) and final parameters, for ppo, trpo, npg;
2. sync and async vectorization give the same bits;
3. a different seed gives a different run;
4. N iterations, stop, resume to 2N == the uninterrupted 2N run (ppo, trpo), also after a SIGINT;
5. evaluation during training changes nothing the training run computes.

Every run evaluates every 3 iterations, so resume is also checked with evaluation on.
"""

import json
from pathlib import Path

import pytest
import torch

from rl.results import scalars
from tests.reproducibility.runs import BUDGET, ITERATION, final_parameters, run_all, same_parameters

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them

ALGOS = ("ppo", "trpo", "npg")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    jobs = {}
    for algo in ALGOS:
        base = [f"algo={algo}", f"total_timesteps={BUDGET[algo]}", "eval_episodes=2", "eval_every=3",
                "checkpoint_every=2"]
        jobs[(algo, "a")] = (root / f"{algo}_a", base + ["seed=7"])
        jobs[(algo, "b")] = (root / f"{algo}_b", base + ["seed=7"])
        jobs[(algo, "other_seed")] = (root / f"{algo}_other", base + ["seed=8"])
    for algo in ("ppo", "trpo"):
        base = [f"algo={algo}", f"total_timesteps={BUDGET[algo]}", "eval_episodes=2", "eval_every=3",
                "checkpoint_every=2"]
        jobs[(algo, "no_eval")] = (root / f"{algo}_no_eval", base + ["seed=7", "eval_episodes=0"])
        jobs[(algo, "async")] = (root / f"{algo}_async", base + ["seed=7", "env.vectorization=async"])
        half = BUDGET[algo] // ITERATION[algo] // 2 * ITERATION[algo]
        jobs[(algo, "stopped")] = (root / f"{algo}_stopped", base + ["seed=7", f"stop_after_steps={half}"])
    results = run_all(jobs)
    for name, (rc, _, err) in results.items():
        assert rc == 0, (name, err[-2000:])

    resumes = {(algo, "resumed"): (jobs[(algo, "stopped")][0], [f"resume={jobs[(algo, 'stopped')][0]}"])
               for algo in ("ppo", "trpo")}
    for name, (rc, _, err) in run_all(resumes).items():
        assert rc == 0, (name, err[-2000:])
    return {name: run_dir for name, (run_dir, _) in {**jobs, **resumes}.items()}


def assert_same_run(first, second):
    a, b = scalars(first), scalars(second)
    assert a.keys() == b.keys()
    for tag in a:
        assert a[tag] == b[tag], f"{tag} differs"
    assert "eval/return" in a and "losses/value_loss" in a
    assert same_parameters(final_parameters(first), final_parameters(second))
    summaries = [json.loads((Path(run) / "summary.json").read_text()) for run in (first, second)]
    for key in ("eval_return_mean", "best_eval_return_mean", "best_eval_step", "train_return_mean_last100"):
        assert summaries[0][key] == summaries[1][key], key


@pytest.mark.parametrize("algo", ALGOS)
def test_same_seed_same_bits_in_separate_processes(runs, algo):
    assert_same_run(runs[(algo, "a")], runs[(algo, "b")])


@pytest.mark.parametrize("algo", ALGOS)
def test_different_seed_different_run(runs, algo):
    a, other = scalars(runs[(algo, "a")]), scalars(runs[(algo, "other_seed")])
    assert a["charts/episodic_return"] != other["charts/episodic_return"]
    assert not same_parameters(final_parameters(runs[(algo, "a")]), final_parameters(runs[(algo, "other_seed")]))


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_sync_and_async_vectorization_agree(runs, algo):
    assert_same_run(runs[(algo, "a")], runs[(algo, "async")])


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_stop_and_resume_equals_uninterrupted(runs, algo):
    assert_same_run(runs[(algo, "a")], runs[(algo, "resumed")])


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_evaluation_during_training_leaves_the_training_run_unchanged(runs, algo):
    with_eval, without = scalars(runs[(algo, "a")]), scalars(runs[(algo, "no_eval")])
    evaluations = with_eval.pop("eval/return")
    iterations = BUDGET[algo] // ITERATION[algo]
    assert [step for step, _ in evaluations] == [i * ITERATION[algo] for i in range(1, iterations + 1)
                                                 if i % 3 == 0 or i == iterations]  # every 3rd and the last
    assert with_eval.pop("eval/return_std") and with_eval.pop("eval/length") and "eval/return" not in without
    assert with_eval == without
    assert same_parameters(final_parameters(runs[(algo, "a")]), final_parameters(runs[(algo, "no_eval")]))


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_best_checkpoint_holds_the_best_evaluation(runs, algo):
    run_dir = Path(runs[(algo, "a")])
    evaluations = scalars(run_dir)["eval/return"]
    best_step, best_return = max(evaluations, key=lambda point: (point[1], -point[0]))  # first of the best
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_eval_step"] == best_step
    assert summary["best_eval_return_mean"] == pytest.approx(best_return, rel=1e-6)  # TensorBoard keeps float32
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["global_step"] == best_step and best["best_eval"]["return"] == summary["best_eval_return_mean"]
