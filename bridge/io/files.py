"""The bridge's files on this machine: where the spool and the state that
must survive a restart live, and a file that cannot be read as the few words
an operator needs.

Shared by the application (the daemon, ``check-config``), the console's
first run (its secret lives in the state directory) and everything that
reads a file named in the settings: the config loader, the TLS files of the
MQTT client, the JWT key files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from bridge.core.settings import Config, SpoolSettings


def read_problem(exc: OSError) -> str:
    """An OSError as the few words an operator needs (``is a directory``),
    without Python's ``[Errno 21]`` and the repeated file name."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied (check the file's owner and mode)"
    return f"cannot read: {exc.strerror or exc}"


def spool_path(configured: str, environ: Mapping[str, str]) -> str:
    """Where the spool lives.  An explicit ``spool.path`` wins.  Left at its
    default, systemd's ``$STATE_DIRECTORY`` is used when set; a user who cannot
    write the default (a first run by hand) gets ``~/.local/state``."""
    default = SpoolSettings().path
    if configured != default:
        return configured
    state = environ.get("STATE_DIRECTORY")
    if state:
        return os.path.join(state.split(":")[0], "spool")
    parent = os.path.dirname(default)
    if os.access(parent, os.W_OK) or os.access(os.path.dirname(parent), os.W_OK):
        return default
    home = environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(home, "edge-bridge", "spool")


def state_dir(config: Config, environ: dict[str, str]) -> str:
    """Where state that must survive a restart is kept: ``state_dir`` when set,
    else the directory that holds the spool."""
    if config.state_dir:
        return config.state_dir
    return os.path.dirname(os.path.abspath(spool_path(config.spool.path, environ)))
