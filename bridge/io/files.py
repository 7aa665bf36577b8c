"""A file that cannot be read, as the few words an operator needs.

Shared by everything that reads a file named in the settings: the config
loader, the TLS files of the MQTT client, the JWT key files.
"""

from __future__ import annotations


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
