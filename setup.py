"""Compiles the ingest hot path to C with mypyc; everything else is in pyproject.toml.

Every MQTT message runs through the modules in ``bridge.native.COMPILED``: the framer, the
normalizer, the delivery rules and their adapters.  They are ordinary typed
Python (``mypy --strict`` clean), and mypyc turns them into C extension
modules that skip the interpreter's dispatch on attribute access, calls and
arithmetic: a quarter fewer instructions per message, librdkafka's included,
and a fifth less of the bridge's CPU at full QoS 1 load (docs/benchmarks.md,
"Issue 13, seventh pass").  The ``.py`` files stay beside the extensions and are what a reader,
``mypy`` and a pure build use.

``EDGE_BRIDGE_PURE_PYTHON=1`` at install time builds no extension (a machine
without a C compiler and the Python headers; a debugger stepping through the
hot path): the same code runs interpreted, slower.  ``edge-bridge version``
says which is installed.

An editable install (``pip install -e .``, as ``scripts/test.sh`` does on every
run) builds the extensions in the source tree, where they are imported before
the ``.py`` files beside them: after editing one of these modules, install
again (tests/conftest.py stops a test run that would test the old build).
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import setup

# The list lives with the code that reports it (``edge-bridge version``).
_NATIVE = runpy.run_path(str(Path(__file__).parent / "bridge" / "native.py"))


def _extensions() -> list[object]:
    if os.environ.get("EDGE_BRIDGE_PURE_PYTHON", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    # mypyc type-checks what it compiles, with the project's mypy settings.
    # The environment may not hold the runtime dependencies yet (pip builds
    # before it installs them): their imports are then untyped, so what
    # strict mode says of untyped values is left to ``mypy`` in the test run.
    options = [
        "--ignore-missing-imports",
        "--no-warn-return-any",
        "--no-warn-unused-ignores",
        "--allow-subclassing-any",
        "--allow-untyped-calls",
        "--allow-untyped-decorators",
        "--cache-dir=/dev/null",
    ]
    sources = [_NATIVE["source_path"](name) for name in _NATIVE["COMPILED"]]
    return list(mypycify([*options, *sources], group_name="bridge_native"))


setup(ext_modules=_extensions())
