"""Time the image encoder's forward and backward passes with its CNN's input channels-last and contiguous
(NCHW) in memory, side by side: the measurement behind rl.networks.CHANNELS_LAST_MIN_SIDE.

    python scripts/benchmark_cnn.py [--threads 1] [--batch 256] [--repeats 7] [--json out.json]

Three images, each with its family's CNN from configs/env: Atari's 4 stacked 84x84 frames (Nature-CNN),
MinAtar's 10x10x4 (one 3x3 conv) and MiniGrid's 7x7x3 (three 2x2 convs). For each: milliseconds per
forward + backward of a minibatch (PPO's update; what dominates an Atari run on the CPU) and per forward of
8 observations (one rollout step of 8 envs), contiguous / channels-last, and which layout rl ships for that
image. Both layouts compute the same function; their float32 results differ by rounding only.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

from rl.networks import Encoder
from rl.observations import ObservationLayout
from rl.policy import CNN_DEFAULTS

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "env"
IMAGES = {  # name: (observation space, the env config whose cnn_* keys apply)
    "atari": (gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), "common"),
    "minatar": (gym.spaces.Box(0, 1, (10, 10, 4), bool), "minatar"),
    "minigrid": (gym.spaces.Box(0, 255, (7, 7, 3), np.uint8), "minigrid"),
}


def cnn_of(config_name):
    env = OmegaConf.load(CONFIGS / f"{config_name}.yaml")
    return {key: env.get(f"cnn_{key}", default) for key, default in CNN_DEFAULTS.items()}


def timed(fn, repeats):
    """Median milliseconds of fn() over `repeats` runs, after two warm-ups."""
    fn(), fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return statistics.median(samples)


def measure(name, batch, repeats):
    space, config_name = IMAGES[name]
    torch.manual_seed(0)
    encoder = Encoder(ObservationLayout(space), cnn_of(config_name))
    obs = torch.randint(0, 2 if space.dtype == bool else 256, (batch, int(np.prod(space.shape)))).float()
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    shipped = next(layout for layout, fmt in layouts.items() if encoder.memory_formats == [fmt])
    outputs = {}
    for layout, memory_format in layouts.items():
        encoder.memory_formats = [memory_format]
        with torch.no_grad():
            outputs[layout] = encoder(obs)
    difference = float((outputs["channels_last"] - outputs["contiguous"]).abs().max())

    def train_step():
        encoder.zero_grad(set_to_none=True)
        encoder(obs).square().mean().backward()

    def act():
        with torch.no_grad():
            encoder(obs[:8])

    row = {"image": name, "shape": list(space.shape), "batch": batch, "shipped": shipped,
           "max_abs_difference": difference}
    for layout, memory_format in layouts.items():
        encoder.memory_formats = [memory_format]
        row[f"{layout}_train_ms"] = timed(train_step, repeats)
        row[f"{layout}_act8_ms"] = timed(act, repeats)
    row["train_speedup"] = row["contiguous_train_ms"] / row["channels_last_train_ms"]
    row["act8_speedup"] = row["contiguous_act8_ms"] / row["channels_last_act8_ms"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    rows = []
    for name in args.images:
        row = measure(name, args.batch, args.repeats)
        rows.append(row)
        print(f"{name:9s} train (fwd+bwd, batch {row['batch']}): contiguous {row['contiguous_train_ms']:.2f} ms, "
              f"channels-last {row['channels_last_train_ms']:.2f} ms ({row['train_speedup']:.2f}x); "
              f"act (8 obs): {row['contiguous_act8_ms']:.3f} / {row['channels_last_act8_ms']:.3f} ms "
              f"({row['act8_speedup']:.2f}x); outputs differ by {row['max_abs_difference']:.1e}; "
              f"rl ships {row['shipped']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                         "cpu": torch.backends.cpu.get_cpu_capability(), "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
