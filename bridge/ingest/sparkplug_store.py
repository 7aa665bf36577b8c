"""The Sparkplug B state on disk: the alias tables of the last births, each edge
node's seq and bdSeq, and who is online, so that DDATA arriving right after a
restart is still resolved.

One JSON file (``<state dir>/sparkplug-state.json``), replaced atomically
(written beside, fsynced, renamed).  It is written when births or deaths
changed the state, at most once per :data:`SAVE_INTERVAL_S`, and once more when
the daemon stops.  A crash between a birth and its save loses that birth; the
next unknown alias then asks the node for a rebirth (when the mapping allows).
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
import trio

from bridge.core.sparkplug_state import SparkplugState

log = structlog.get_logger(__name__)

FILE_NAME = "sparkplug-state.json"
# Births are rare; a second bounds the births a crash can lose and the writes
# a flapping node can cause.
SAVE_INTERVAL_S = 1.0


def load_state(directory: str) -> SparkplugState:
    """The saved state, or an empty one (logged) when there is none or it
    cannot be read: births will fill it again."""
    path = Path(directory) / FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return SparkplugState()
    except OSError as exc:
        log.warning("sparkplug.state_unreadable", path=str(path), error=str(exc))
        return SparkplugState()
    try:
        state = SparkplugState.restore(data)
    except ValueError as exc:
        log.warning(
            "sparkplug.state_unreadable",
            path=str(path),
            error=str(exc),
            hint="starting without alias tables; nodes are asked for births as data arrives",
        )
        return SparkplugState()
    log.info(
        "sparkplug.state_loaded", path=str(path), entities=len(state.nodes) + len(state.devices)
    )
    return state


def write_file(directory: str, data: bytes) -> None:
    """Replace the state file atomically (blocking: run in a worker thread)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, FILE_NAME)
    temporary = path + ".tmp"
    with open(temporary, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)


class StateSaver:
    """Writes the state when told it changed; :meth:`run` lives in the daemon's
    nursery, :meth:`save_now` is for shutdown."""

    def __init__(self, state: SparkplugState, directory: str) -> None:
        self.state = state
        self.directory = directory
        self._changed = trio.Event()

    def changed(self) -> None:
        """Called by ingest after a batch that left the state dirty."""
        self._changed.set()

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            await self.save()
            await trio.sleep(SAVE_INTERVAL_S)  # a rate limit, not a synchronisation

    async def save(self) -> None:
        self.state.dirty = False
        data = self.state.snapshot()  # on the trio thread: the state is mutated there
        try:
            await trio.to_thread.run_sync(write_file, self.directory, data)
        except OSError as exc:
            self.state.dirty = True
            log.error(
                "sparkplug.state_not_saved",
                directory=self.directory,
                error=str(exc),
                hint="set state_dir to a writable directory",
            )
