"""The run folder: created where it can be, used by one process at a time, left as it was by a run that
never started."""

import errno
import fcntl
import os
import shutil

LOCK = ".lock"
HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}
_held = []  # open lock files: a lock lives as long as the process (and its forked env workers)
# Folders this process took: {absolute path: (its entries before, None if created here; the parent folders
# created for it)}, so a refused run can undo exactly what it added.
_taken = {}


class RunFolderError(Exception):
    """A run folder that cannot be used; the message is one line."""


def take(run_dir, key="hydra.run.dir", created=False):
    """Create `run_dir` where needed and lock it for this process, remembering what it held (`created`: Hydra
    has just made it). A folder this process already took is left as it is."""
    path = os.path.abspath(run_dir)
    if path in _taken:
        return
    if created:
        _taken[path] = (None, [])
    else:
        missing, parent = [], os.path.dirname(path)
        while parent and not os.path.lexists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        _taken[path] = (os.listdir(path) if os.path.isdir(path) else None, missing)  # missing: deepest first
        prepare(path, key)
    lock(path, key)


def release_refused(run_dir):
    """Undo what this process added to a folder it took, for a run that never started: Hydra's files, the
    lock, the folder and the parents it created, when they hold nothing else."""
    path = os.path.abspath(run_dir)
    if path not in _taken:
        return
    before, parents = _taken.pop(path)
    undo(path, before)
    for parent in parents:  # deepest first; a path too long for the OS stopped makedirs part of the way
        try:
            os.rmdir(parent)  # only when empty
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENAMETOOLONG):  # never made, or not makeable
                break


def prepare(run_dir, key="hydra.run.dir"):
    """Create `run_dir` (and its parents) or raise RunFolderError saying why it cannot be a run folder."""
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise RunFolderError(f"{key}={run_dir}: exists and is not a folder")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"{key}={run_dir}: cannot create the run folder ({error.strerror})") from None


def lock(run_dir, key="hydra.run.dir"):
    """Take the run folder for this process (flock on <run_dir>/.lock, held until exit).

    A second process, a new run or a resume, is refused in one line before it writes anything.
    """
    path = os.path.join(run_dir, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise RunFolderError(f"{key}={run_dir}: cannot write in the run folder ({error.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(os.fstat(fd).st_ino)
        os.close(fd)
        raise RunFolderError(f"{key}={run_dir}: in use by another rl process (pid {holder}); wait for it to "
                             "end or choose another folder") from None
    _held.append(fd)  # nothing is written into the file: taking the lock changes nothing in the folder


def _lock_holder(inode):
    """The pid holding a flock on the file with this inode, from /proc/locks (Linux), or "unknown"."""
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return fields[4]
    except OSError:
        pass
    return "unknown"


def undo(run_dir, entries_before):
    """Remove what a run that never started added to its folder: Hydra's .hydra/ and our lock file, and the
    folder itself when this process created it (`entries_before` None). Anything else is left alone."""
    if not os.path.isdir(run_dir) or os.path.islink(run_dir):
        return
    before = set(entries_before or ())
    added = set(os.listdir(run_dir)) - before
    hydra_dir = os.path.join(run_dir, ".hydra")
    if added - {".hydra", LOCK} or (".hydra" in added and not set(os.listdir(hydra_dir)) <= HYDRA_FILES):
        return  # the folder holds more than a refused run writes: not ours to clean
    for name in added:
        path = os.path.join(run_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if entries_before is None and not os.listdir(run_dir):
        os.rmdir(run_dir)
