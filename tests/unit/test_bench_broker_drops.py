"""The bench names the broker's drops beside a shortfall on Kafka
(bench/ingest.py broker_drops, from mosquitto's log as the test support's
``log_text()`` reads it: any bytes, decoded with replacement)."""

from __future__ import annotations

from pathlib import Path

from bench.ingest import broker_drops


def test_drops_are_read_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "mosquitto.log"
    log.write_bytes(
        b"18:26:19: New client connected from 127.0.0.1:43209 as bench-bridge-0 (p5, c0, k30).\n"
        b"18:26:25: Outgoing messages are being dropped for client bench-bridge-0.\n"
        b"\xff\xfe not text\n"
        b"18:26:31: Outgoing messages are being dropped for client bench-bridge-1.\n"
    )
    assert broker_drops(log.read_text(errors="replace")) == [
        "mosquitto dropped messages for bench-bridge-0",
        "mosquitto dropped messages for bench-bridge-1",
    ]


def test_a_quiet_or_missing_log_says_nothing(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.log"
    quiet.write_text("18:26:19: mosquitto version 2.0.11 running\n")
    assert broker_drops(quiet.read_text()) == []
    assert broker_drops("") == []  # log_text() of a log never written
