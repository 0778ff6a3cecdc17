"""The one-command GPU check: the cuda test suite, the TRPO/FVP benchmark and an end-to-end SPS table,
cpu vs cuda learner, written as one markdown report.

    python scripts/gpu_check.py REPORT_FOLDER [--quick] [--steps-per-run N]

On a GPU machine with no package registry, first install the wheels in ../shared/gpu-wheels (see its
README; they are built for one Python version: this script prints the machine's). Parts:

1. `python -m pytest -m gpu tests/gpu` (cuda training, acting copy = learner, cpu/cuda rollouts equal,
   FVP/CG/TRPO on cuda = cpu, deterministic runs bit-identical, checkpoints across devices);
2. `scripts/benchmark_trpo.py --devices cpu cuda` (FVP analytic vs double backprop, update time by batch);
3. end-to-end training SPS on Hopper-v4, PPO and TRPO, learner on cpu and on cuda, num_envs 1, 8, 16, 32
   (async vectorization where the cores allow, one process per sub-env);
4. Stable-Baselines3 PPO / sb3-contrib TRPO at 1 env on cuda and cpu, when SB3 is installed.

Writes REPORT_FOLDER/gpu_report.md and gpu_report.json. Sized to finish in under 8 minutes on a 16-core
machine; `--quick` does less. Without CUDA it prints one line and exits 2.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rl import results

REPO = Path(__file__).resolve().parent.parent


def run(command, timeout=None):
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return result, time.perf_counter() - start


def training_sps(algo, num_envs, device, steps, cores):
    """Training-loop SPS (TensorBoard's last charts/sps) of a short run, or an error text."""
    vectorization = "async" if 1 < num_envs <= cores else "sync"
    with tempfile.TemporaryDirectory() as root:
        run_dir = Path(root) / "run"
        result = results.train(run_dir, f"algo={algo}", "env=Hopper-v4", f"env.num_envs={num_envs}",
                               f"env.vectorization={vectorization}", f"device={device}", f"total_timesteps={steps}",
                               "eval_episodes=0", "checkpoint_every=0", cwd=REPO, env={"PYTHONWARNINGS": "ignore"},
                               check=False)
        if result.returncode != 0:
            return {"error": result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "failed"}
        sps, update, rollout = results.values(run_dir, "charts/sps", "time/update_seconds", "time/rollout_seconds")
        sps = sps[-1]
        return {"sps": sps, "vectorization": vectorization, "update_s": sum(update[1:]) / max(len(update) - 1, 1),
                "rollout_s": sum(rollout[1:]) / max(len(rollout) - 1, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="folder for gpu_report.md and gpu_report.json")
    parser.add_argument("--quick", action="store_true", help="fewer cells and steps (a smoke test)")
    parser.add_argument("--steps-per-run", type=int, default=None,
                        help="steps of each SPS run (default: 3 iterations of the config's batch)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(f"error: no CUDA GPU here (torch {torch.__version__}, python {platform.python_version()}); run "
              f"scripts/gpu_check.py on a GPU machine", file=sys.stderr)
        return 2
    args.report.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    header = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "cores": cores, "command": " ".join(sys.argv)}
    lines = ["# GPU check", "", f"`{header['command']}`", "",
             f"GPU {header['gpu']}, torch {header['torch']} (CUDA {header['cuda']}), Python {header['python']}, "
             f"{cores} CPU cores.", ""]
    report = {"header": header}

    result, seconds = run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"])
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    report["pytest"] = {"returncode": result.returncode, "summary": summary, "seconds": seconds}
    lines += ["## 1. `pytest -m gpu`", "", f"{summary} (exit {result.returncode}, {seconds:.0f}s)", ""]
    if result.returncode != 0:
        lines += ["```", result.stdout[-4000:], "```", ""]

    bench = [sys.executable, "scripts/benchmark_trpo.py", "--devices", "cpu", "cuda", "--repeats", "3",
             "--threads", "1"]
    if args.quick:
        bench += ["--batches", "2048", "--hidden", "64"]
    result, seconds = run(bench + ["--json", str(args.report / "benchmark_trpo.json")])
    report["benchmark_trpo"] = {"returncode": result.returncode, "seconds": seconds}
    lines += ["## 2. TRPO update and FVP, cpu (1 thread) vs cuda", "", "`" + " ".join(bench[1:]) + "`", "",
              result.stdout.strip() if result.returncode == 0 else f"failed: {result.stderr[-2000:]}", ""]

    env_counts = [1, 8] if args.quick else [1, 8, 16, 32]
    rows = []
    lines += ["## 3. End-to-end training SPS, Hopper-v4 (acting on the CPU, learner on cpu or cuda)", "",
              "| algo | num_envs | vectorization | cpu SPS | cuda SPS | cuda / cpu | update s cpu | update s cuda |",
              "|---|---|---|---|---|---|---|---|"]
    batch_steps = {"ppo": 2048, "trpo": 1024}
    for algo in ("ppo", "trpo"):
        for num_envs in env_counts:
            steps = args.steps_per_run or 3 * num_envs * batch_steps[algo]
            cells = {device: training_sps(algo, num_envs, device, steps, cores) for device in ("cpu", "cuda")}
            rows.append({"algo": algo, "num_envs": num_envs, "steps": steps, **cells})
            cpu, cuda = cells["cpu"], cells["cuda"]
            if "error" in cpu or "error" in cuda:
                lines.append(f"| {algo} | {num_envs} | - | {cpu.get('error', '')} | {cuda.get('error', '')} | | | |")
                continue
            lines.append(f"| {algo} | {num_envs} | {cpu['vectorization']} | {cpu['sps']:.0f} | {cuda['sps']:.0f} | "
                         f"{cuda['sps'] / cpu['sps']:.2f}x | {cpu['update_s']:.3f} | {cuda['update_s']:.3f} |")
            print(lines[-1], flush=True)
    report["sps"] = rows
    lines.append("")

    try:
        import sb3_contrib  # noqa: F401
        import stable_baselines3  # noqa: F401

        anchor = True
    except ImportError:
        anchor = False
    if anchor:
        lines += ["## 4. Against Stable-Baselines3 at 1 env", ""]
        for device in ("cuda", "cpu"):
            command = [sys.executable, "scripts/benchmark_sps.py", "--envs", "Hopper-v4", "--num-envs", "1",
                       "--steps", "10000" if args.quick else "20000", "--device", device, "--threads", "1"]
            result, _ = run(command)
            lines += [f"`{' '.join(command[1:])}`", "", result.stdout.strip() if result.returncode == 0
                      else f"failed: {result.stderr[-1500:]}", ""]
    else:
        lines += ["## 4. Against Stable-Baselines3", "", "skipped: stable-baselines3 / sb3-contrib not installed", ""]

    report["seconds"] = time.perf_counter() - started
    lines += [f"Whole check: {report['seconds']:.0f}s.", ""]
    (args.report / "gpu_report.md").write_text("\n".join(lines))
    (args.report / "gpu_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.report / 'gpu_report.md'} in {report['seconds']:.0f}s")
    return 0 if report["pytest"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
