"""TensorBoard scalars, the console progress line, and summary.json."""

import json
import os
import sys
import time
from collections import deque

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


class Logger:
    def __init__(self, run_dir, config_text, hparam_dict, total_steps, progress="auto", start_step=0,
                 resumed=False):
        # On resume, TensorBoard hides whatever an interrupted process logged past the checkpoint.
        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=start_step + 1 if resumed else None)
        if not resumed:
            self.writer.add_text("config", "```yaml\n" + config_text + "\n```", 0)
            # Written into this run's own event file (add_hparams would open a second sub-run).
            for summary in hparams(hparam_dict, {"eval/return": 0.0}):
                self.writer.file_writer.add_summary(summary)
        self.recent_returns = deque(maxlen=20)
        self.total_steps = total_steps
        interactive = sys.stderr.isatty() if progress == "auto" else bool(progress)
        self.bar = None
        if interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.last_line = 0.0

    def episodes(self, episodes, step):
        for episode_return, episode_length in episodes:
            self.writer.add_scalar("charts/episodic_return", episode_return, step)
            self.writer.add_scalar("charts/episodic_length", episode_length, step)
            self.recent_returns.append(episode_return)

    def scalars(self, metrics, step):
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def progress(self, step, sps):
        recent = sum(self.recent_returns) / len(self.recent_returns) if self.recent_returns else float("nan")
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(sps=f"{sps:.0f}", episodic_return=f"{recent:.1f}", refresh=False)
        elif time.monotonic() - self.last_line >= 5.0 or step >= self.total_steps:
            self.last_line = time.monotonic()
            print(f"step {step}/{self.total_steps}  sps {sps:.0f}  episodic_return {recent:.1f}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.writer.flush()
        self.writer.close()


def write_json(path, data):
    """Write JSON atomically: a reader sees the old file or the whole new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
