"""Run a policy exported by `python -m rl.export` with numpy, gymnasium and onnxruntime alone (no torch, no rl).

    python examples/run_onnx_policy.py runs/.../export/policy-step1000000.onnx --episodes 10 --seed 10001

Episode i starts from env.reset(seed=seed + i), as `python -m rl.evaluate` seeds its episodes; prints the
returns as JSON.
"""

import argparse
import json

import gymnasium as gym
import numpy as np
import onnxruntime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("policy", help="the .onnx file (its .onnx.json lies beside it)")
parser.add_argument("--episodes", type=int, default=10)
parser.add_argument("--seed", type=int, default=10_001)
args = parser.parse_args()

env_id = json.load(open(f"{args.policy}.json"))["env"]
session = onnxruntime.InferenceSession(args.policy, providers=["CPUExecutionProvider"])
returns = []
for episode in range(args.episodes):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=args.seed + episode)
    total, done = 0.0, False
    while not done:
        action = session.run(None, {"obs": np.asarray(obs, dtype=np.float32)[None]})[0][0]
        obs, reward, terminated, truncated, _ = env.step(action)
        total, done = total + float(reward), terminated or truncated
    returns.append(total)
print(json.dumps({"env": env_id, "returns": returns, "mean": float(np.mean(returns))}))
