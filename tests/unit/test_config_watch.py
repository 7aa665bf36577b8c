"""Which files --watch-config looks at, and when it reloads (bridge.config_watch).

The files are real files in the test's directory; the watcher polls every
10 ms and the test counts its looks, so "no reload" is checked over a known
number of polls rather than a guessed time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import trio

from bridge.config_watch import Fingerprint, fingerprint, watch_config, watched_files
from bridge.core.settings import AuthSettings, Config
from tests.support import async_wait_until


def test_the_main_file_its_includes_and_the_key_file_are_watched(tmp_path: Path) -> None:
    main = tmp_path / "bridge.toml"
    config = Config(
        include=["mappings/a.toml", "b.toml"], auth=AuthSettings(public_key_file="/etc/k.pem")
    )
    assert watched_files(main, config) == [
        main,
        tmp_path / "mappings/a.toml",
        tmp_path / "b.toml",
        Path("/etc/k.pem"),
    ]


def test_the_fingerprint_sees_writes_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    assert fingerprint([path]) == ((str(path),),)
    path.write_text("x = 1\n")
    first = fingerprint([path])
    os.utime(path, ns=(1, 1))
    assert fingerprint([path]) != first
    path.unlink()
    assert fingerprint([path]) == ((str(path),),)


class CountingLook:
    """fingerprint(), counting its calls (they run in worker threads)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, files: list[Path]) -> Fingerprint:
        with self._lock:
            self.calls += 1
        return fingerprint(files)

    async def polls(self, count: int) -> None:
        """Return once ``count`` more looks have been taken."""
        target = self.calls + count
        await async_wait_until(lambda: self.calls >= target, 10, f"{count} polls")


async def test_one_reload_per_change_and_new_includes_are_watched(tmp_path: Path) -> None:
    main = tmp_path / "bridge.toml"
    extra = tmp_path / "extra.toml"
    main.write_text("")
    configs = [Config()]
    reloads: list[int] = []

    def reload() -> None:
        reloads.append(len(reloads))
        if len(reloads) == 1:  # the first reload adds an include
            configs.append(Config(include=["extra.toml"]))

    look = CountingLook()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_config, main, lambda: configs[-1], reload, 0.01, look)
        await look.polls(3)
        assert reloads == []
        os.utime(main, ns=(10**9, 10**9))
        await async_wait_until(lambda: len(reloads) >= 1, 10, "a reload")
        await look.polls(3)
        assert reloads == [0], "an unchanged file must not reload again"
        extra.write_text("")
        await async_wait_until(lambda: len(reloads) >= 2, 10, "the include's reload")
        await look.polls(3)
        assert reloads == [0, 1]
        nursery.cancel_scope.cancel()
