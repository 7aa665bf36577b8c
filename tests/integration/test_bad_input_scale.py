"""Bad input at scale: 10,000 malformed messages interleaved with 10,000 valid
ones, through the real daemon.

Every valid message must be on the clean topic and every malformed one on the
dead-letter topic with the reason it was refused, each exactly once; the
daemon must not log per message, and its memory must stay flat: the resident
set after the second half of the traffic is no more than ``RSS_GROWTH_LIMIT``
above what it was after the first half.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many, wait_until
from tests.support.sequenced import ACKED, daemon_metric, report

PER_KIND = 10_000
MAX_PAYLOAD = 4096
RSS_GROWTH_LIMIT = 20 << 20

Message = tuple[str, bytes, int]


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _topic(device: str) -> str:
    return f"tenant/t1/device/{device}/telemetry"


# Each malformed kind: the reason the bridge must give, and a message built
# from the index of the malformed message (its topic names it, so that every
# dead letter can be traced to the message it came from).
BAD_KINDS: list[tuple[str, Callable[[int], Message]]] = [
    ("invalid_json", lambda i: (_topic(f"B{i}"), b'{"metrics": {"a": 1}', 1)),
    ("invalid_json", lambda i: (_topic(f"B{i}"), b"\xff\xfe\x00 binary " + bytes([i % 256]), 1)),
    ("not_an_object", lambda i: (_topic(f"B{i}"), b"[1, 2, 3]", 1)),
    (
        "schema_version_unsupported",
        lambda i: (_topic(f"B{i}"), _json({"schema_version": 9, "metrics": {"a": 1}}), 1),
    ),
    ("missing_metrics", lambda i: (_topic(f"B{i}"), _json({"schema_version": 1}), 1)),
    (
        "device_mismatch",
        lambda i: (
            _topic(f"B{i}"),
            _json({"schema_version": 1, "device": "SOMEONE-ELSE", "metrics": {"a": 1}}),
            1,
        ),
    ),
    ("payload_too_large", lambda i: (_topic(f"B{i}"), b" " * (MAX_PAYLOAD + 1), 1)),
    (
        "invalid_topic",
        lambda i: (
            _topic("X" * 200 + str(i)),
            _json({"schema_version": 1, "metrics": {"a": 1}}),
            1,
        ),
    ),
    (
        "metric_type_invalid",
        lambda i: (_topic(f"B{i}"), _json({"schema_version": 1, "metrics": {"a": None}}), 1),
    ),
    (
        "invalid_ts",
        lambda i: (
            _topic(f"B{i}"),
            _json({"schema_version": 1, "metrics": {"a": 1}, "ts": "yesterday-ish"}),
            1,
        ),
    ),
    (
        "too_many_metrics",
        lambda i: (
            _topic(f"B{i}"),
            _json({"schema_version": 1, "metrics": {f"m{n}": n for n in range(300)}}),
            1,
        ),
    ),
]


def traffic() -> tuple[list[Message], Counter[tuple[str, str]]]:
    """Valid and malformed messages alternating; and the dead letters expected,
    as (MQTT topic, reason) pairs."""
    messages: list[Message] = []
    expected: Counter[tuple[str, str]] = Counter()
    for n in range(PER_KIND):
        valid = _json({"schema_version": 1, "metrics": {"seq": n}})
        messages.append((_topic(f"D{n % 50}"), valid, 1))
        reason, make = BAD_KINDS[n % len(BAD_KINDS)]
        bad = make(n)
        messages.append(bad)
        expected[(bad[0], reason)] += 1
    return messages, expected


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def wait_acked(port: int, count: int) -> None:
    """Every message so far handled: its records are in Kafka, it is acknowledged."""
    wait_until(
        lambda: daemon_metric(port, ACKED) >= count,
        120,
        f"the bridge to acknowledge {count} messages",
    )


def test_ten_thousand_malformed_among_ten_thousand_valid(
    setup: BridgeSetup, request: pytest.FixtureRequest
) -> None:
    messages, expected_letters = traffic()
    half = len(messages) // 2
    config = setup.config(f"[limits]\nmax_payload_bytes = {MAX_PAYLOAD}")
    bridge = BridgeProcess(config)
    try:
        bridge.wait_for_event("bridge.ready", timeout=30)
        quiet_from = bridge.mark()
        rss: list[int] = []
        for part in (messages[:half], messages[half:]):
            publish_many(setup.mosquitto.url, part, timeout=120)
            wait_acked(setup.listen_port, half * (len(rss) + 1))
            rss.append(rss_bytes(bridge.pid))
        logged = len(bridge.lines) - quiet_from
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=PER_KIND, timeout=60)
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=PER_KIND, timeout=60)
        assert bridge.stop() == 0, bridge.output_tail()
    finally:
        bridge.kill()

    seqs = Counter(record.json()["value"] for record in clean)
    letters = Counter((r.json()["mqtt_topic"], r.json()["reason"]) for r in dlq)
    growth = rss[1] - rss[0]
    matching = sum((letters & expected_letters).values())
    report(
        request,
        f"bad input at scale: valid={PER_KIND} clean={len(clean)} unique={len(seqs)} "
        f"malformed={PER_KIND} dead_letters={len(dlq)} matching_reason={matching} "
        f"rss_after_half={rss[0] >> 20} MiB rss_after_all={rss[1] >> 20} MiB log_lines={logged}",
    )
    assert sorted(seqs) == list(range(PER_KIND)) and len(clean) == PER_KIND
    assert letters == expected_letters, (
        f"missing: {list((expected_letters - letters).items())[:5]}, "
        f"unexpected: {list((letters - expected_letters).items())[:5]}"
    )
    for record in dlq:
        letter = record.json()
        assert letter["detail"], letter
        assert record.headers["reason"].decode() == letter["reason"]
    assert growth <= RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB over the second half"
    # Refusals are counted and sampled, never logged one by one.
    assert logged < 100, bridge.output_tail(100)
