"""The normalizer's per-topic and per-identity caches change nothing a message
becomes: repeated messages, messages whose identity comes from the payload,
user properties and cache overflow give the same records as a fresh
normalizer would."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.core import normalize
from bridge.core.normalize import Normalizer
from bridge.ops.memory_budget import CACHE_ENTRY_BYTES
from tests.unit.core_fixtures import NOW, normalizer_for, reasons, records

WriteConfig = Callable[..., Path]
TOPIC = "tenant/t1/device/DEV-001/telemetry"
PAYLOAD = b'{"schema_version":1,"metrics":{"t":1}}'
# The device comes from the payload: one topic, several identities.
FROM_PAYLOAD = """
[[mappings]]
mqtt = { topic = "gw/{tenant}/up" }
kafka = { key = "{tenant}/{device}", headers = { who = "{device}@{tenant}" } }
payload = { device = { field = "dev" } }
"""


@pytest.fixture
def default(tmp_config: WriteConfig) -> Normalizer:
    return normalizer_for(tmp_config(""))


def test_repeated_messages_give_identical_records(default: Normalizer) -> None:
    first = records(default.process(TOPIC, PAYLOAD, NOW))
    second = records(default.process(TOPIC, PAYLOAD, NOW))
    assert first == second
    assert len(first) == 2  # one clean, one raw


def test_a_bad_topic_segment_is_refused_every_time(default: Normalizer) -> None:
    topic = "tenant/t1/device/" + "x" * 200 + "/telemetry"
    for _ in range(2):
        outcome = default.process(topic, PAYLOAD, NOW)
        assert reasons(outcome) == [("invalid_topic", None)]


def test_the_payload_limit_is_checked_before_the_topic_segments(default: Normalizer) -> None:
    topic = "tenant/t1/device/" + "x" * 200 + "/telemetry"
    default.process(topic, PAYLOAD, NOW)  # the route is cached now
    huge = b'{"pad":"' + b"x" * 300_000 + b'"}'
    assert reasons(default.process(topic, huge, NOW)) == [("payload_too_large", None)]


def test_identities_from_the_payload_are_kept_apart(tmp_config: WriteConfig) -> None:
    normalizer = normalizer_for(tmp_config(FROM_PAYLOAD))
    seen = {}
    for device in ("A", "B", "A"):
        payload = b'{"schema_version":1,"dev":"%s","metrics":{"t":1}}' % device.encode()
        (_, key, headers, _), _raw = records(normalizer.process("gw/t1/up", payload, NOW))
        seen.setdefault(device, (key, headers))
        assert (key, headers) == seen[device]
        assert key == f"t1/{device}"
        assert ("who", f"{device}@t1") in headers
    assert seen["A"] != seen["B"]


def test_an_unhashable_identity_is_refused_not_raised(tmp_config: WriteConfig) -> None:
    normalizer = normalizer_for(tmp_config(FROM_PAYLOAD))
    payload = b'{"schema_version":1,"dev":["A"],"metrics":{"t":1}}'
    assert reasons(normalizer.process("gw/t1/up", payload, NOW)) == [("invalid_field", None)]


def test_user_properties_never_reach_another_message(default: Normalizer) -> None:
    with_properties = default.process(TOPIC, PAYLOAD, NOW, [("site", "north")])
    plain = default.process(TOPIC, PAYLOAD, NOW)
    assert ("site", "north") in records(with_properties)[0][2]
    assert all(name != "site" for name, _ in records(plain)[0][2])


def test_the_caches_start_over_past_their_bound(
    default: Normalizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(normalize, "CACHE_ENTRIES", 3)
    for n in range(10):
        outcome = default.process(f"tenant/t1/device/D{n}/telemetry", PAYLOAD, NOW)
        assert outcome.clean == 1
        assert len(default._routes) <= 3
        assert len(default._identities) <= 3
    assert records(default.process(TOPIC, PAYLOAD, NOW))[0][1] == "t1:DEV-001"


DELIVERY = """
[[mappings]]
mqtt = { topic = "tenant/{tenant}/device/{device}/telemetry" }
kafka = { headers = { delivery = "qos {mqtt_qos} retain {mqtt_retain}" } }
"""


def test_header_templates_see_the_qos_and_retain_flag_of_each_message(
    tmp_config: WriteConfig,
) -> None:
    normalizer = normalizer_for(tmp_config(DELIVERY))

    def delivery(qos: int, retain: bool) -> str:
        outcome = normalizer.process(TOPIC, PAYLOAD, NOW, None, qos, retain)
        (_, _, headers, _), _raw = records(outcome)
        return dict(headers)["delivery"]

    assert delivery(1, False) == "qos 1 retain false"
    assert delivery(0, True) == "qos 0 retain true"
    assert delivery(1, False) == "qos 1 retain false"  # from the cache, still per message


RAW_DELIVERY = """
[[mappings]]
kafka = { clean_enabled = false, headers = { delivery = "qos {mqtt_qos} retain {mqtt_retain}" } }
"""


def test_a_raw_only_mapping_is_cached_by_topic_and_delivery_within_the_bound(
    tmp_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw-only mapping finds its key and headers by topic and delivery
    alone (its identity comes from the topic): each device keeps its own, each
    delivery its own header, and the cache starts over past its bound."""
    monkeypatch.setattr(normalize, "CACHE_ENTRIES", 3)
    normalizer = normalizer_for(tmp_config(RAW_DELIVERY))
    for n in range(6):
        topic = f"tenant/t1/device/D{n}/telemetry"
        for qos, retain in ((1, False), (0, True), (1, False)):
            outcome = normalizer.process(topic, b"not read", NOW, None, qos, retain)
            [(_, key, headers, value)] = records(outcome)
            assert (key, value) == (f"t1:D{n}", b"not read")
            assert ("device", f"D{n}") in headers
            assert dict(headers)["delivery"] == f"qos {qos} retain {str(retain).lower()}"
            assert len(normalizer._raw_identities) <= 3


@pytest.mark.parametrize("kafka", ["", "clean_enabled = false"])
def test_the_caches_cost_what_the_memory_budget_says_per_device(
    tmp_config: WriteConfig, kafka: str
) -> None:
    """The memory budget's CACHE_ENTRY_BYTES covers what the caches keep for
    each device, with the default mapping and with a raw-only one (which keeps
    one more look-up)."""
    normalizer = normalizer_for(tmp_config(f"[[mappings]]\n[mappings.kafka]\n{kafka}\n"))
    devices = 3000
    messages = [
        (
            f"tenant/t1/device/DEV-{n:05d}/telemetry",
            PAYLOAD.replace(b"{", b'{"device":"DEV-%05d",' % n, 1),
        )
        for n in range(devices)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for topic, payload in messages:
            outcome = normalizer.process(topic, payload, NOW, None, 1, False)
            assert outcome.records and not outcome.dead
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(normalizer._routes) == devices
    assert grown / devices <= CACHE_ENTRY_BYTES
