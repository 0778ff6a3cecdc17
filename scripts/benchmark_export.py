"""Per-call latency of an exported policy beside rl.load(run).act(), side by side in one process.

    python scripts/benchmark_export.py RUN_DIR [--calls 2000] [--json out.json]

Builds the run's latest checkpoint as ONNX and as TorchScript the way `python -m rl.export` does, then times
one call for batch 1 and batch 64 of observations the policy met in its env: rl.load().act() (NumPy in,
NumPy out), onnxruntime (one intra-op thread) and the TorchScript module (one torch thread). Reported: the
median and the 90th percentile of per-call microseconds over --calls calls, after 100 warm-up calls, and
each runtime's median as a ratio of act()'s.
"""

import argparse
import io
import json
import statistics
import sys
import time

import numpy as np
import torch

import rl
from rl.export import recorded_observations, to_bytes


def timed(call, calls):
    for _ in range(100):
        call()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return {"median_us": 1e6 * statistics.median(seconds), "p90_us": 1e6 * seconds[int(0.9 * len(seconds))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(1)
    policy = rl.load(args.run_dir)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = onnxruntime.InferenceSession(to_bytes(policy, True, "onnx"), options,
                                           providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(io.BytesIO(to_bytes(policy, True, "torchscript")))
    observations, _ = recorded_observations(policy, 64)
    rows = []
    for batch in (1, 64):
        obs = np.ascontiguousarray(observations[:batch])

        def run_scripted():
            with torch.no_grad():
                return scripted(torch.from_numpy(obs)).numpy()

        runtimes = {"rl.load().act()": lambda: policy.act(obs), "onnxruntime": lambda: session.run(None, {"obs": obs}),
                    "torchscript": run_scripted}
        measured = {name: timed(call, args.calls) for name, call in runtimes.items()}
        for name, times in measured.items():
            rows.append({"batch": batch, "runtime": name, **times,
                         "vs_act": times["median_us"] / measured["rl.load().act()"]["median_us"]})
    print(f"policy: {policy.config.algo.name} on {policy.config.env.id}, {args.calls} calls each\n")
    print("| batch | runtime | median us | p90 us | median vs act() |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch']} | {row['runtime']} | {row['median_us']:.1f} | {row['p90_us']:.1f} | "
              f"{row['vs_act']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run_dir": args.run_dir, "env": policy.config.env.id, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
