"""TensorBoard scalars and hparams, the console start banner, progress line and done line.

Event files go straight into the run folder, so `tensorboard --logdir runs` names each run by its folder.
"""

import os
import sys
import time
from collections import deque

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

HPARAM_METRICS = ("eval/return", "charts/episodic_return")


def hparam_value(value):
    """What TensorBoard's HParams table shows: numbers and strings as they are, everything else as text."""
    if isinstance(value, bool):
        return str(value).lower()  # torch would store a bool as the number 0 or 1
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def hparam_summaries(values, columns):
    """The HParams summaries of one run: its values, under an experiment that declares every column in
    `columns` ({name: example value}), so runs of different algorithms share one table with all columns.
    Unset values (None) are left out: the table shows an empty cell."""
    declared = {k: hparam_value(v) if v is not None else 0.0 for k, v in columns.items()}  # None: a number unset
    experiment, _, _ = hparams(declared, dict.fromkeys(HPARAM_METRICS, 0.0))
    _, session_start, session_end = hparams({k: hparam_value(v) for k, v in values.items() if v is not None}, {})
    return experiment, session_start, session_end


class Logger:
    """Writes a run's TensorBoard events and console lines; `enabled=False` (ranks other than 0 of a
    distributed run) writes nothing."""

    def __init__(self, run_dir, config_text, hparam_values, hparam_columns, total_steps, progress="auto",
                 start_step=0, resumed=False, enabled=True):
        self.enabled = enabled
        self.interactive = False
        self.bar = None
        if not enabled:
            return
        # On resume, TensorBoard hides whatever an interrupted process logged past the checkpoint.
        self.writer = SummaryWriter(run_dir, purge_step=start_step + 1 if resumed else None)
        if not resumed:
            self.writer.add_text("config", "```yaml\n" + config_text + "\n```", 0)
            # Written into this run's own event file (add_hparams would open a second sub-run).
            for summary in hparam_summaries(hparam_values, hparam_columns):
                self.writer.file_writer.add_summary(summary)
        self.recent_returns = deque(maxlen=20)
        self.total_steps = total_steps
        self.interactive = sys.stderr.isatty() if progress == "auto" else bool(progress)
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.last_line = 0.0

    def episodes(self, episodes, step):
        if not self.enabled:
            return
        for episode_return, episode_length in episodes:
            self.writer.add_scalar("charts/episodic_return", episode_return, step)
            self.writer.add_scalar("charts/episodic_length", episode_length, step)
            self.recent_returns.append(episode_return)

    def message(self, text):
        """A line on the console that does not break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def scalars(self, metrics, step):
        if not self.enabled:
            return
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def progress(self, step, sps):
        if not self.enabled:
            return
        recent = sum(self.recent_returns) / len(self.recent_returns) if self.recent_returns else float("nan")
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(sps=f"{sps:.0f}", episodic_return=f"{recent:.1f}", refresh=False)
        elif time.monotonic() - self.last_line >= 5.0 or step >= self.total_steps:
            self.last_line = time.monotonic()
            print(f"step {step}/{self.total_steps}  sps {sps:.0f}  episodic_return {recent:.1f}", flush=True)

    def close(self):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.writer.flush()
        self.writer.close()


def start_banner(run_dir, algo, env_id, device, num_envs, num_steps, num_iterations, requested_steps, start_step,
                 world_size=1):
    """The block a run prints before its first step: where it writes, what it trains, on what, how long."""
    import gymnasium as gym
    from gymnasium.envs.registration import find_highest_version, parse_env_id

    run_dir = os.path.abspath(run_dir)
    batch = world_size * num_envs * num_steps
    total = num_iterations * batch
    budget = f"{num_iterations} iterations = {total} steps"
    if total != requested_steps:
        budget += f" (total_timesteps={requested_steps} rounded down to whole iterations)"
    if start_step:
        budget += f"; resuming at step {start_step}"
    lines = [
        f"run folder   {run_dir}",
        f"training     {algo} on {env_id} (gymnasium {gym.__version__})",
        f"device       {device}",
        f"batch        {f'{world_size} processes x ' if world_size > 1 else ''}{num_envs} envs x {num_steps} steps "
        f"= {batch} steps per iteration",
        f"budget       {budget}",
        f"tensorboard  tensorboard --logdir {run_dir}",
    ]
    namespace, name, version = parse_env_id(env_id.rpartition(":")[2])
    newest = find_highest_version(namespace, name)
    if version is not None and newest is not None and newest > version:
        lines.append(f"note         {env_id} has a newer version, v{newest}")
    return "\n".join(lines)


def describe_device(device, requested):
    """The learner device actually used, and why when `device=auto` chose it."""
    if device.startswith("cuda"):
        name = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    else:
        name = device
    if requested == "auto":
        return f"{name} (device=auto: {'CUDA GPU found' if device.startswith('cuda') else 'no CUDA GPU here'})"
    return name


def done_line(summary, run_dir):
    line = f"done: {summary['total_timesteps']} steps in {summary['wall_seconds']:.1f}s ({summary['sps']:.0f} sps)"
    if summary["eval_episodes"]:
        line += (f", eval return {summary['eval_return_mean']:.1f} +/- {summary['eval_return_std']:.1f} over "
                 f"{summary['eval_episodes']} episodes (best {summary['best_eval_return_mean']:.1f} at step "
                 f"{summary['best_eval_step']})")
    return f"{line} -> {os.path.abspath(run_dir)}"
