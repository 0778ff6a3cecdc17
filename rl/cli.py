"""The command line of `python -m rl.train`: arguments checked before Hydra, the run folder taken, Hydra's
config composed, validated and trained, and every refusal or fault turned into one line and an exit code.

Only this module knows Hydra. Exit codes: 0 done or stopped with a checkpoint; 2 bad input (nothing started,
nothing left behind); 1 a fault during the run (an env, a NaN, a full disk), with the last checkpoint intact;
130 stopped at once by a second Ctrl-C.
"""

import atexit
import os
import shutil
import sys
import tempfile

import gymnasium as gym
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from rl import checkpoint, distributed, resume, run_folder
from rl.config import CONFIG_DIR, ConfigError, resolve, validate
from rl.envs import quiet_version_warnings
from rl.faults import RunFailed, StopRequest, resume_command
from rl.logger import done_line


def fail(message, exit_code=2):
    """One line on stderr and the exit code. In a distributed run, bad input is reported by rank 0 alone
    (every rank finds the same); a fault during the run by each rank that meets it."""
    if exit_code != 2 or distributed.env_rank() == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def run_job(cfg, train):
    """The job Hydra runs with the composed config: validate, take the folder, `train`, say how it ended."""
    distributed.initialize()
    # Rank 0's folder is the run's; the other ranks write nothing of their own.
    run_dir = distributed.broadcast_object(os.path.abspath(cfg.resume or HydraConfig.get().runtime.output_dir))
    resume_state = None
    try:
        if distributed.is_main():
            run_folder.take(run_dir, created=True)  # a no-op unless this is Hydra's default folder, new now
        if cfg.resume:
            overrides = list(HydraConfig.get().overrides.task)
            cfg, resume_state = resume.on_rank_zero(resume.load_resume, cfg, overrides)
        resolve(cfg)
        device = distributed.use_device(validate(cfg))
        # Installed until the process returns: a signal as the run ends must not kill it mid-line.
        stop = StopRequest().install()
        summary = train(cfg, run_dir, device, resume_state, stop)
    except (ConfigError, checkpoint.CheckpointError, run_folder.RunFolderError) as error:
        if distributed.is_main():  # a run that never started: undo what it added to its folder
            run_folder.release_refused(run_dir)
        fail(error)
    except RunFailed as error:
        fail(f"rank {distributed.rank()}: {error}" if distributed.world_size() > 1 else error, error.exit_code)
    if summary is not None:
        print(done_line(summary, run_dir), flush=True)  # a signal now changes nothing: the run is complete
    elif stop.late is not None and stop.requested is not None:  # a second Ctrl-C after the stop was saved
        fail(f"stopped at once by a second signal ({stop.late}) after the checkpoint was saved; continue with: "
             f"{resume_command(run_dir)}", 130)


def main(train):
    """`python -m rl.train`: rl.train passes its `train` (so this module imports nothing of the loop)."""
    quiet_version_warnings()
    # A failing async worker's error comes back to us as an exception (one line); gymnasium would also log
    # it, with its traceback, at ERROR level. Its warnings still show.
    gym.logger.min_level = gym.logger.ERROR + 1
    # Hydra prints composition errors (an unknown env or algo config, a bad override) over several
    # lines and exits 1. We let them raise so they become one line and exit 2, like our own checks.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    resumed, extra = resume.resume_arguments(sys.argv[1:])
    if resumed and not os.path.isdir(resumed):
        fail(f"resume={resumed}: no such run directory")
    run_dirs = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("hydra.run.dir=")]
    sys.argv += extra
    folder = resumed or (run_dirs[-1] if run_dirs else None)
    if distributed.requested() and distributed.env_rank() != 0:
        # Ranks other than 0 of a torchrun job write nothing: rank 0 takes the run folder and tells them
        # which it is. Hydra gets a scratch folder to create, removed at exit.
        scratch = tempfile.mkdtemp(prefix="rl-rank-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
        folder = None
    key = "resume" if resumed else "hydra.run.dir"
    if folder:  # taken before Hydra writes its .hydra/ files into it
        try:
            run_folder.take(folder, key)
            if not resumed and os.path.lexists(checkpoint.checkpoint_dir(folder)):
                raise run_folder.RunFolderError(f"hydra.run.dir={folder}: already holds a run; continue it with "
                                                "resume=<dir> or choose another folder")
        except run_folder.RunFolderError as error:
            run_folder.release_refused(folder)
            fail(error)
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)(
            lambda cfg: run_job(cfg, train))()
    except (HydraException, OmegaConfBaseException) as error:
        if folder:
            run_folder.release_refused(folder)
        fail(describe_hydra_error(error, sys.argv[1:]))
    except OSError as error:  # Hydra creating its default run folder or writing .hydra/
        fail(f"{error.filename or 'run folder'}: cannot write ({error.strerror})")


def describe_hydra_error(error, arguments):
    """One line for a Hydra composition or parse error, naming the argument or config at fault."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    text = " ".join(str(error).split("See https://")[0].split())
    if isinstance(error, OverrideParseException):
        parser = OverridesParser.create()
        for argument in (a for a in arguments if not a.startswith("-")):
            try:
                parser.parse_overrides([argument])
            except OverrideParseException:
                return f"{argument}: not a valid value ({text})"
    missing = getattr(error, "missing_cfg_file", None)
    if missing and "/" in missing:
        group, name = missing.split("/", 1)
        options = ", ".join(o for o in getattr(error, "options", None) or [] if o != "common")
        hint = "; for any registered gymnasium id use env=generic env.id=<id>" if group == "env" else ""
        return f"{group}={name}: no config {missing}.yaml (available: {options}){hint}"
    return text
