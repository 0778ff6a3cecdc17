"""Files written so that a reader sees the old file or the whole new one, never a part."""

import json
import os


def write_atomically(path, write):
    """Write through `write(f)` to <path>.tmp, fsync, rename over `path`, fsync the folder. On any failure (a full
    disk, a signal) the partial .tmp is removed, so the folder holds the old file or the new one and nothing else."""
    tmp = f"{path}.tmp"
    try:
        # O_NOFOLLOW: a planted .tmp symlink must not redirect the write.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json(path, data):
    """`data` as indented JSON, written atomically."""
    text = json.dumps(data, indent=2) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))
