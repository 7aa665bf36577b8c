"""Fixtures shared by every test: real brokers, unique names, config files."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Tests import their helpers as `tests.support`. `tests` is not a package and
# the pytest executable does not put the repository root on sys.path, so this
# conftest (loaded before any test module) does.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from bridge import native  # noqa: E402
from tests.support import Mosquitto, Tansu, write_config  # noqa: E402


def pytest_report_header() -> str:
    return f"edge-bridge hot path: {native.describe()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """An editable install imports the compiled hot path (setup.py) before the
    ``.py`` beside it: after an edit, testing it would test the old build."""
    changed = native.stale()
    if changed:
        pytest.exit(
            f"changed since they were compiled: {', '.join(changed)}; install again "
            "(scripts/test.sh does, or .venv/bin/pip install -e .) before testing them",
            returncode=4,
        )


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto per test on a free 127.0.0.1 port, with persistence.

    Per test because tests restart, kill and fill it; it starts in a few ms.
    """
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """One Tansu Kafka broker for the whole session.

    Shared because tests use topics named with `unique`, so they cannot see
    each other's records. A test that pauses it must resume it before ending.
    """
    with Tansu(tmp_path_factory.mktemp("tansu")) as broker:
        yield broker


@pytest.fixture
def unique() -> str:
    """A short suffix, different for every test, for topic names and client ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def tmp_config(tmp_path: Path) -> Callable[..., Path]:
    """write_config bound to this test's tmp_path: tmp_config(text, name="bridge.toml")."""

    def write(text: str, name: str = "bridge.toml") -> Path:
        return write_config(tmp_path, text, name)

    return write
