"""Inputs that pass the obvious checks and would crash later: each refused in one line naming the key.

All of them are refused by `resolve`/`validate`, checked here in-process. That such a refusal reaches the
user as one line and exit 2 with nothing left behind is shown end to end by tests/test_cli.py (a new
folder) and by the last test below (a folder the user already had)."""

import pytest

from tests.faults.conftest import one_error_line
from tests.reproducibility.runs import folder_digest, run_all
from tests.test_configs import refusal

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them

CASES = {  # name: (overrides, text the line must contain)
    "infinite_learning_rate": (["algo.learning_rate=inf"], "algo.learning_rate=inf: must be a finite number"),
    "infinite_max_kl": (["algo=trpo", "algo.max_kl=inf"], "algo.max_kl=inf: must be a finite number"),
    "infinite_clip": (["algo.clip_coef=inf"], "algo.clip_coef=inf: must be a finite number"),
    "nan_log_std": (["env=Pendulum-v1", "algo.init_log_std=nan"], "algo.init_log_std=nan: must be a finite number"),
    "nan_target_kl": (["algo.target_kl=nan"], "algo.target_kl=nan"),
    "huge_critic": (["algo.critic_hidden_sizes=[60000,60000]"], "GiB"),
    "render_mode_human": (["+env.kwargs.render_mode=human"], "env.kwargs.render_mode='human': training does not"),
    "unset_environment_variable": (["seed=${oc.env:RL_TEST_UNSET_VARIABLE}"], "seed='${oc.env:RL_TEST_UNSET"),
    "bad_nan_policy": (["nan_policy=ignore"], "nan_policy"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_in_one_line_naming_the_key(name, monkeypatch):
    monkeypatch.delenv("RL_TEST_UNSET_VARIABLE", raising=False)
    overrides, text = CASES[name]
    line = refusal(*overrides)
    assert text in line, line


def test_a_refused_run_in_an_existing_empty_folder_leaves_it_as_it_was(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    before = folder_digest(folder)
    rc, _, err = run_all({"x": (folder, ["algo.learning_rate=inf"])})["x"]
    assert rc == 2 and "algo.learning_rate=inf: must be a finite number" in one_error_line(err)
    assert folder_digest(folder) == before  # Hydra's .hydra/ and our lock file were taken away again


def test_the_huge_network_message_says_how_much_memory_it_needs():
    line = refusal(*CASES["huge_critic"][0])
    assert "3,600," in line and "weights need about" in line, line  # 60000 x 60000 weights in the middle layer
