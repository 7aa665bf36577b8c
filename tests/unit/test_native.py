"""Which build of the hot path runs (bridge/native.py, setup.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bridge import native
from tests.unit.core_fixtures import REPO


def test_a_source_changed_after_its_extension_was_built_is_stale(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.cpython-311-x86_64-linux-gnu.so"
    old = tmp_path / "old.cpython-311-x86_64-linux-gnu.so"
    for path in (fresh, old, tmp_path / "fresh.py", tmp_path / "old.py"):
        path.write_bytes(b"")
    os.utime(tmp_path / "fresh.py", (1_000, 1_000))
    os.utime(fresh, (2_000, 2_000))
    os.utime(old, (1_000, 1_000))
    os.utime(tmp_path / "old.py", (2_000, 2_000))
    assert native.newer_sources([fresh, old]) == [str(tmp_path / "old.py")]


def test_every_compiled_module_has_its_source_in_the_package() -> None:
    """setup.py builds from these paths; a module renamed and not here would
    fail the build, not the tests."""
    for name in native.COMPILED:
        assert (REPO / native.source_path(name)).is_file(), name


def test_version_says_which_build_runs() -> None:
    done = native.compiled()
    described = native.describe()
    if len(done) == len(native.COMPILED):
        assert described.startswith("compiled")
    elif not done:
        assert described.startswith("interpreted")
    else:
        assert f"{len(done)} of {len(native.COMPILED)} modules" in described
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("edge-bridge 0.1.0 · Python ")
    assert result.stdout.endswith(f" · hot path {described}\n")
