"""Run a policy exported by `python -m rl.export` with numpy, gymnasium and onnxruntime alone (no torch, no rl).

    python examples/run_onnx_policy.py runs/.../export/policy-step1000000.onnx --episodes 10 --seed 10001

Episode i starts from env.reset(seed=seed + i), as `python -m rl.evaluate` seeds its episodes; prints the
returns as JSON. An observation that is not a Box of features (a Dict, an image, a Discrete) is fed as
gymnasium.spaces.flatten of it, with info["action_mask"] appended for a run that read its mask there: the
file's input. Envs a run made with env.preprocessing or env.wrappers need those wrappers here too (the JSON
names them); this example makes the env with gym.make alone.
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

record = json.load(open(f"{args.policy}.json"))
env_id = record["env"]
layout = record["layout"]
flat = len(layout) == 1 and layout[0]["kind"] == "vector"  # the raw observation, else the flattened one
info_mask = record["action_mask"] == "info"
session = onnxruntime.InferenceSession(args.policy, providers=["CPUExecutionProvider"])
returns = []
for episode in range(args.episodes):
    env = gym.make(env_id)
    obs, info = env.reset(seed=args.seed + episode)
    total, done = 0.0, False
    while not done:
        features = np.asarray(obs if flat else gym.spaces.flatten(env.observation_space, obs), dtype=np.float32)
        if info_mask:
            mask = info.get("action_mask", np.ones(layout[-1]["size"]))  # the last piece
            features = np.concatenate([features, np.asarray(mask, dtype=np.float32)])
        action = session.run(None, {"obs": features[None]})[0][0]
        obs, reward, terminated, truncated, info = env.step(action)
        total, done = total + float(reward), terminated or truncated
    returns.append(total)
print(json.dumps({"env": env_id, "returns": returns, "mean": float(np.mean(returns))}))
