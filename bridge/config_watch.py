"""Reload when the config files change (``edge-bridge run --watch-config``).

SIGHUP (``systemctl reload``) stays the primary way to reload; watching is
for setups where nobody sends a signal after editing a file (a config
management tool that only writes files, a container with a mounted config).

The watched files are the main config, the mapping files it includes and the
JWT public key file, recomputed after every reload so that a newly included
file is watched from then on.  They are polled, not watched with inotify: a
few ``stat()`` calls every couple of seconds cost nothing, work on every file
system (bind mounts and ConfigMaps replace files by renaming, which inotify
watches on the old inode miss) and need no extra dependency.

A change is acted on once: the fingerprint (modification time and size of
each file, or its absence) is remembered whether the reload succeeds or is
refused, so a broken file is reported once, not every poll, and the next
edit is picked up.  An editor that writes a file in several steps may
trigger a refused reload followed by a good one; the daemon keeps the old
config in between.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from bridge.core.settings import Config

log = structlog.get_logger(__name__)

#: Seconds between two looks at the files when ``--watch-config`` has no value.
DEFAULT_INTERVAL_S = 2.0

Fingerprint = tuple[tuple[str, int, int] | tuple[str], ...]


@dataclass(frozen=True)
class Watch:
    """What ``--watch-config`` asked for: the main config file and how often."""

    main: Path
    interval_s: float = DEFAULT_INTERVAL_S


def watched_files(main: Path, config: Config) -> list[Path]:
    """The files whose content makes up ``config``: the main file, its
    includes (relative to it, as the loader reads them) and the JWT key."""
    files = [main, *(main.parent / name for name in config.include)]
    if config.auth.public_key_file:
        files.append(Path(config.auth.public_key_file))
    return files


def fingerprint(files: list[Path]) -> Fingerprint:
    """What the files look like now: (path, mtime in ns, size), or (path,)
    for a file that is missing."""
    seen: list[tuple[str, int, int] | tuple[str]] = []
    for path in files:
        try:
            status = os.stat(path)
        except OSError:
            seen.append((str(path),))
            continue
        seen.append((str(path), status.st_mtime_ns, status.st_size))
    return tuple(seen)


async def watch_config(
    main: Path,
    current: Callable[[], Config],
    reload: Callable[[], None],
    interval_s: float = DEFAULT_INTERVAL_S,
    look: Callable[[list[Path]], Fingerprint] = fingerprint,
) -> None:
    """Call ``reload`` whenever a watched file changes, until cancelled.
    ``current`` gives the config in force, to know which files to watch;
    ``look`` takes a fingerprint (in a worker thread: it calls ``stat``)."""
    files: list[Path] = []
    last: Fingerprint = ()
    while True:
        watched = watched_files(main, current())
        if watched != files:  # at the start, or a reload added or dropped an include
            files = watched
            last = await trio.to_thread.run_sync(look, files)
            log.info("config.watching", files=[str(f) for f in files], interval_s=interval_s)
        await trio.sleep(interval_s)
        now = await trio.to_thread.run_sync(look, files)
        if now == last:
            continue
        changed = sorted({entry[0] for entry in set(now) ^ set(last)})
        log.info("config.changed", files=changed)
        # Remembered before reloading: a file written again while the reload
        # reads it differs from ``now`` and is reloaded on the next poll.
        last = now
        reload()
