"""scripts/gpu_check.py on a machine without a usable GPU: one line, exit 2, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_without_cuda_the_gpu_check_says_so_in_one_line_and_exits_2(tmp_path):
    report = tmp_path / "report"
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", str(report)], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "no CUDA GPU here" in lines[0], result.stderr
    assert not report.exists()
