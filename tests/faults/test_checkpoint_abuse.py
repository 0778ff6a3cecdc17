"""Checkpoints that were tampered with, swapped or built to exhaust memory: each refused in one line, exit 2,
the run folder unchanged, no code run."""

import os
import shutil
import zipfile

import pytest
import torch

from rl import checkpoint
from rl.evaluate import main as evaluate_main
from rl.trained import checkpoint_size_limit
from tests.faults.conftest import one_error_line
from tests.reproducibility.runs import folder_digest, run_all

pytestmark = pytest.mark.slow  # many end-to-end processes; the full suite (README, CI) runs them


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("abuse")
    results = run_all({
        "cartpole": (root / "cartpole", ["total_timesteps=1024", "eval_episodes=0", "checkpoint_every=2"]),
        "acrobot": (root / "acrobot", ["env=Acrobot-v1", "algo.num_steps=128", "total_timesteps=1024",
                                        "eval_episodes=0"]),
    })
    for name, (rc, _, err) in results.items():
        assert rc == 0, (name, err[-2000:])
    return root


def latest_file(run_dir):
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def resealed(state):
    """What an attacker who knows the format would write: the digest recomputed over the tampered payload."""
    return {**state, "digest": checkpoint.payload_digest(state)}


def tamper_storage_view(run_dir):  # a small tensor that views 8 MB: torch.save writes the whole storage
    state = torch.load(latest_file(run_dir), weights_only=True)
    key = "actor.net.0.bias"
    state["agent"][key] = torch.zeros(2 * 1024 * 1024)[: state["agent"][key].numel()]
    torch.save(resealed(state), latest_file(run_dir))


def tamper_compressed(run_dir):  # the same entries, deflated: what it unpacks to is no longer its size
    path = latest_file(run_dir)
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info, data in entries:
            target.writestr(info.filename, data)


def tamper_huge(run_dir):  # a sparse file named by latest, larger than any checkpoint of this model can be
    with open(latest_file(run_dir), "r+b") as f:
        f.truncate(checkpoint.size_bound(20_000) + 1)  # CartPole's model has about 9,000 weights


def tamper_latest_to_dev_zero(run_dir):
    pointer = run_dir / "checkpoints" / "latest"
    pointer.unlink()
    pointer.symlink_to("/dev/zero")


def tamper_latest_fifo(run_dir):
    pointer = run_dir / "checkpoints" / "latest"
    pointer.unlink()
    os.mkfifo(pointer)


def tamper_latest_long(run_dir):
    (run_dir / "checkpoints" / "latest").write_bytes(b"step_" + b"0" * 100_000 + b".pt\n")


def tamper_config(text):
    def tamper(run_dir):
        state = torch.load(latest_file(run_dir), weights_only=True)
        torch.save(resealed({**state, "config": text}), latest_file(run_dir))
    return tamper


def tamper_flipped_byte(run_dir):  # one byte of an Adam moment, in place; the digest is not recomputed
    path = latest_file(run_dir)
    state = torch.load(path, weights_only=True)
    needle = state["optimizers"]["actor"]["state"][0]["exp_avg"].reshape(-1)[:4].numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at > 0
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def tamper_negative_step(run_dir):
    state = torch.load(latest_file(run_dir), weights_only=True)
    torch.save(resealed({**state, "global_step": -5}), latest_file(run_dir))


def tamper_inconsistent_step(run_dir):
    state = torch.load(latest_file(run_dir), weights_only=True)
    torch.save(resealed({**state, "global_step": state["global_step"] + 7}), latest_file(run_dir))


def tamper_symlinked_checkpoints(run_dir):
    elsewhere = run_dir.parent / f"{run_dir.name}_elsewhere"
    shutil.move(run_dir / "checkpoints", elsewhere)
    (run_dir / "checkpoints").symlink_to(elsewhere)


def tamper_nan_weight(run_dir):  # sealed again: only a check of the numbers themselves can refuse it
    state = torch.load(latest_file(run_dir), weights_only=True)
    state["agent"]["actor.net.0.weight"][0, 0] = float("nan")
    torch.save(resealed(state), latest_file(run_dir))


def tamper_nan_adam_moment(run_dir):
    state = torch.load(latest_file(run_dir), weights_only=True)
    moments = state["optimizers"]["actor"]["state"][0]["exp_avg_sq"]
    moments.fill_(float("inf"))
    torch.save(resealed(state), latest_file(run_dir))


def tamper_negative_variance(run_dir):
    state = torch.load(latest_file(run_dir), weights_only=True)
    state["agent"]["obs_normalizer.stats.var"] = -state["agent"]["obs_normalizer.stats.var"] - 1.0
    torch.save(resealed(state), latest_file(run_dir))


CASES = {  # name: (tamper(run_dir), text the one error line must contain)
    "storage_view_bomb": (tamper_storage_view, "views more storage than it holds"),
    "compressed_entries": (tamper_compressed, "compressed entries"),
    "huge_file": (tamper_huge, "more than the"),
    "latest_symlink_to_dev_zero": (tamper_latest_to_dev_zero, "cannot open the latest pointer"),
    "latest_fifo": (tamper_latest_fifo, "is not a regular file"),
    "latest_too_long": (tamper_latest_long, "more than the 256"),
    "config_not_yaml": (tamper_config("env: [unclosed\n  - {"), "embedded config is not valid YAML"),
    "config_python_tag": (tamper_config("!!python/object/apply:os.system ['touch /tmp/rl-pwned']\n"),
                          "embedded config is not valid YAML"),
    "flipped_byte_in_adam_state": (tamper_flipped_byte, "checksum mismatch"),
    "negative_global_step": (tamper_negative_step, "impossible progress counters"),
    "nan_weight_resealed": (tamper_nan_weight, "non-finite values in the checkpoint's agent"),
    "inf_adam_moment_resealed": (tamper_nan_adam_moment, "non-finite values in the checkpoint's optimizers"),
    "negative_normalizer_variance_resealed": (tamper_negative_variance, "negative obs_normalizer.stats.var"),
    "step_not_a_whole_iteration": (tamper_inconsistent_step, "iterations of"),
    "symlinked_checkpoints_folder": (tamper_symlinked_checkpoints, "is a symlink"),
}


# Resumed as real processes: one case refused while loading (the path every loader refusal takes to the
# user) and the one refused later, by the training loop. The other cases are refused by the loader, called
# in-process below as a resume and the evaluator call it: a process each would add ~5 s of imports.
END_TO_END = ("flipped_byte_in_adam_state", "step_not_a_whole_iteration")


def load_as_resume_does(run_dir):
    state = checkpoint.load(checkpoint.latest(str(run_dir)), checkpoint_size_limit(str(run_dir)))
    checkpoint.config_of(state)


@pytest.mark.parametrize("name", [name for name in CASES if name not in END_TO_END])
def test_tampered_checkpoint_is_refused_by_the_loader_with_the_folder_unchanged(runs, tmp_path, name):
    run_dir = tmp_path / name
    shutil.copytree(runs / "cartpole", run_dir, symlinks=True)
    CASES[name][0](run_dir)
    before = folder_digest(run_dir)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        load_as_resume_does(run_dir)
    line = str(refused.value)
    assert "\n" not in line and CASES[name][1] in line, line
    assert folder_digest(run_dir) == before
    assert not os.path.exists("/tmp/rl-pwned")


@pytest.mark.parametrize("name", END_TO_END)
def test_tampered_checkpoint_is_refused_with_the_folder_unchanged(runs, tmp_path, name):
    run_dir = tmp_path / name
    shutil.copytree(runs / "cartpole", run_dir, symlinks=True)
    CASES[name][0](run_dir)
    before = folder_digest(run_dir)
    results = run_all({name: (run_dir, [f"resume={run_dir}"])})
    rc, _, err = results[name]
    line = one_error_line(err)
    assert rc == 2 and CASES[name][1] in line, line
    assert folder_digest(run_dir) == before


def test_a_whole_checkpoint_of_another_run_is_refused(runs, tmp_path):
    run_dir = tmp_path / "swapped"
    shutil.copytree(runs / "cartpole", run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    shutil.copytree(runs / "acrobot" / "checkpoints", run_dir / "checkpoints")  # intact, sealed, but not ours
    before = folder_digest(run_dir)
    rc, _, err = run_all({"swapped": (run_dir, [f"resume={run_dir}"])})["swapped"]
    line = one_error_line(err)
    assert rc == 2 and "belongs to another run" in line, line
    assert folder_digest(run_dir) == before


def test_the_evaluator_applies_the_same_checks(runs, tmp_path, capsys):
    run_dir = tmp_path / "evaluate"
    shutil.copytree(runs / "cartpole", run_dir)
    tamper_flipped_byte(run_dir)
    before = folder_digest(run_dir)
    assert evaluate_main([str(run_dir)]) == 2  # rl.evaluate's entry point, in this process
    assert "checksum mismatch" in one_error_line(capsys.readouterr().err)
    assert folder_digest(run_dir) == before
