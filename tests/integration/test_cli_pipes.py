"""The offline commands behave in a shell pipeline: a reader that stops early
(``edge-bridge try-mapping ... | head``) ends the command quietly."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.unit.core_fixtures import MAPPINGS


def test_try_mapping_into_a_reader_that_stops_early_exits_quietly() -> None:
    # Large enough that the output overflows the pipe's buffer (64 KiB).
    payload = json.dumps(
        {"schema_version": 1, "metrics": {f"m{i}": i for i in range(90)}, "pad": "x" * 60_000}
    )
    argv = [sys.executable, "-m", "bridge", "try-mapping", str(MAPPINGS / "telemetry.toml")]
    argv += ["--topic", "tenant/t1/device/DEV-1/telemetry", "--payload", payload]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(1) == b"{"
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=30) == 0, stderr
    assert "Traceback" not in stderr
