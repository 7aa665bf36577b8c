"""``edge-bridge check-config`` on ``[[streams]]``: the three examples are
accepted (with a warning for ``auth = "none"``), a bad endpoint is refused with
the path of the bad field, and a reload builds the same checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config_loader import ConfigError
from bridge.runtime import build_runtime

REPO = Path(__file__).resolve().parents[2]


def check_config(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_BRIDGE_")}
    env["STATE_DIRECTORY"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_examples_and_warns_of_auth_none(tmp_path: Path) -> None:
    examples = REPO / "examples" / "streams"
    for name in ("channels", "customer-portal"):
        done = check_config(examples / f"{name}.toml", tmp_path)
        assert done.returncode == 0, done.stderr
        assert "auth: none" not in done.stderr
    done = check_config(examples / "gps-passthrough.toml", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "stream 'gps' on /api/v1/stream: passthrough events, read json from tracking.data" in (
        done.stdout
    )
    assert "streams[0].auth: none: anyone who reaches" in done.stderr
    assert "auth.no_key" not in done.stderr  # no endpoint verifies tokens


def test_check_config_and_reload_refuse_a_bad_endpoint_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[[streams]]\nname = "a"\nauth = "jwt"\nwebsocket_path = "/metrics"\n')
    done = check_config(path, tmp_path)
    assert done.returncode != 0
    assert "streams[0].websocket_path: /metrics is already served by the daemon" in done.stderr
    with pytest.raises(ConfigError) as caught:
        build_runtime(path, {}, {})  # what a reload builds before changing anything
    assert any("streams[0].websocket_path" in line for line in caught.value.errors)
