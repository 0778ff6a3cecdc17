"""The default job (PPO on CartPole-v1, tuned) solves the task."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_default_job_solves_cartpole(tmp_path):
    run_dir = tmp_path / "default"
    result = subprocess.run([sys.executable, "-m", "rl.train", f"hydra.run.dir={run_dir}", "progress=false"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"] == "CartPole-v1" and summary["algo"] == "ppo"
    assert summary["eval_episodes"] == 10
    assert summary["eval_return_mean"] >= 475, summary
