"""Makes `scripts/` importable from tests (the scripts are files, not a package)."""

import importlib
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))


def script(name):
    """The module of scripts/<name>.py."""
    return importlib.import_module(name)
