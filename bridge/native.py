"""Which modules of the ingest hot path run compiled.

``setup.py`` compiles the modules named in :data:`COMPILED` to C extensions
with mypyc unless the install was made with ``EDGE_BRIDGE_PURE_PYTHON=1``.
The code is the same either way; only its speed differs, so the daemon logs
which build runs (``bridge.starting``), ``edge-bridge version`` prints it and
the bench puts it beside its numbers.

This module imports nothing of the package: ``setup.py`` reads the list from
it before anything is built or installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from pathlib import Path

#: The modules on the path of every MQTT message, compiled by ``setup.py``.
COMPILED = (
    "bridge.core.coerce",
    "bridge.core.delivery",
    "bridge.core.extract",
    "bridge.core.mqtt_codec",
    "bridge.core.normalize",
    "bridge.core.puback_order",
    "bridge.core.timestamps",
    "bridge.ingest.pipeline",
    "bridge.ingest.stats",
    "bridge.io.kafka_producer",
)


def source_path(module: str) -> str:
    """``bridge.core.normalize`` -> ``bridge/core/normalize.py`` (for setup.py)."""
    return module.replace(".", "/") + ".py"


def compiled() -> list[str]:
    """The modules of :data:`COMPILED` that were imported from an extension."""
    return [name for name in COMPILED if _extension_file(name) is not None]


def describe() -> str:
    """One line for people: how much of the hot path is compiled."""
    done = len(compiled())
    if done == len(COMPILED):
        return f"compiled with mypyc, {done} modules"
    if done == 0:
        return "interpreted (installed with EDGE_BRIDGE_PURE_PYTHON=1, or not built)"
    return f"partly compiled, {done} of {len(COMPILED)} modules"


def stale() -> list[str]:
    """The compiled modules whose ``.py`` changed after they were built: an
    editable install imports the extension, so what runs is not the source
    beside it until the package is installed again."""
    extensions = [_extension_file(name) for name in COMPILED]
    return newer_sources([path for path in extensions if path is not None])


def newer_sources(extensions: list[Path]) -> list[str]:
    """The ``.py`` files beside ``extensions`` modified after them."""
    found = []
    for extension in extensions:
        source = extension.with_name(extension.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
            found.append(str(source))
    return found


def _extension_file(name: str) -> Path | None:
    origin = getattr(importlib.import_module(name), "__file__", None) or ""
    if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return Path(origin)
    return None
