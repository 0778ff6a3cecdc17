"""What a run does when something goes wrong: stop requests from signals, and for a fault during a run,
one line that says what happened and what was kept, and an exit code."""

import signal

from rl import checkpoint, distributed
from rl.envs import dead_workers


class RanksDiverged(Exception):
    """Ranks of a distributed run that should hold the same weights do not (distributed_check)."""


class RunFailed(Exception):
    """A fault after the run started; the message is one line and says what was kept."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between iterations; a second signal stops at once.
    Once the run's work is saved (`finish`), a signal is only noted in `late`: the run's last lines and its
    exit code then say what it means, never a traceback or a death by the signal."""

    def __init__(self):
        self.requested = None
        self.late = None
        self.finished = False
        self.previous = {}

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def finish(self):
        self.finished = True

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.finished:
            self.late = self.late or name
        elif self.requested is not None:
            raise KeyboardInterrupt
        else:
            self.requested = name

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def check_ranks_agree(agent, iteration):
    """distributed_check: every rank's weights must be bit-identical after every update."""
    digests = distributed.gather_objects(checkpoint.payload_digest({"agent": agent.state_dict()}))
    if len(set(digests)) > 1:
        raise RanksDiverged(f"distributed_check: the ranks' weights differ after iteration {iteration} "
                            f"(digests {', '.join(d[:8] for d in digests)})")


def first_line(error):
    return " ".join(str(error).split("\n")[0].split())[:200] or type(error).__name__


def kept(run_dir, progress):
    saved = progress["saved_step"]
    return (f"the last checkpoint (step {saved}) is intact; resume with {resume_command(run_dir)}"
            if saved is not None else "no checkpoint was written yet")


def resume_command(run_dir):
    world = distributed.world_size()
    launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
    return f"{launcher} -m rl.train resume={run_dir}"


def describe_fault(error, envs, run_dir, progress):
    """(one-line message, exit code) for a fault during a run."""
    kept_line = kept(run_dir, progress)
    if isinstance(error, KeyboardInterrupt):
        return f"stopped at once by a second signal at step {progress['step']}; {kept_line}", 130
    if isinstance(error, (EOFError, ConnectionError)):  # a worker's pipe closed under us
        dead = ", ".join(map(str, dead_workers(envs))) or "?"
        return f"env worker of sub-env {dead} died ({type(error).__name__}); {kept_line}", 1
    if isinstance(error, OSError):
        where = error.filename or run_dir
        # The resume it offers works once there is room; with no checkpoint there is nothing to resume.
        room = " once there is room" if progress["saved_step"] is not None else ""
        return f"{run_dir}: cannot write ({error.strerror or error} at {where}); {kept_line}{room}", 1
    return f"{error}; {kept_line}", 1
