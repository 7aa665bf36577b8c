"""Input chosen to break the core, and what it must become instead: a dead letter
with a reason naming the field, never an exception (issue 10, items 1, 2, 12,
13 and 14, and the crash barrier around each message)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.cli import main
from bridge.core.alarms import AlarmEvaluator
from bridge.core.json_depth import nesting_depth
from bridge.core.mqtt_codec import InboundMessage
from bridge.core.normalize import Normalizer
from bridge.core.plan import Plan, PlanError
from bridge.core.settings import AlarmRule, KafkaSettings, MetricSpec
from bridge.core.timestamps import format_ms
from bridge.core.topics import TopicFilter
from bridge.ingest.pipeline import Ingest
from bridge.ingest.stats import IngestStats
from bridge.io.kafka_producer import KafkaProducer
from tests.unit.core_fixtures import MAPPINGS, NOW, REPO, plan_from, reasons, values
from tests.unit.test_store_forward import Session

WriteConfig = Callable[..., Path]
TOPIC = "tenant/t1/device/DEV-001/telemetry"
VALID = b'{"schema_version":1,"metrics":{"t":1}}'


def _documented_reasons() -> frozenset[str]:
    """The reason codes of the table in docs/mappings.md."""
    text = (REPO / "docs" / "mappings.md").read_text()
    table = text.split("## Dead-letter reasons", 1)[1]
    return frozenset(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))


DOCUMENTED_REASONS = _documented_reasons()


def test_every_reason_the_core_gives_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "bridge" / "core").glob("*.py"))
    emitted = set(re.findall(r'InputRejected\(\s*"([a-z_]+)"', source)) | {"internal_error"}
    assert emitted == DOCUMENTED_REASONS


def deep(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    """A valid message whose field ``x`` nests ``levels`` arrays (depth levels + 1)."""
    return b'{"schema_version":1,"metrics":{"t":1},"x":' + opener * levels + closer * levels + b"}"


def letters(outcome: Any) -> list[tuple[str, str]]:
    return [(v["reason"], v["detail"]) for v in values(outcome, "telemetry.dlq")]


@pytest.fixture
def plan(tmp_config: WriteConfig) -> Callable[[str], Plan]:
    return lambda text: plan_from(tmp_config(text))


@pytest.fixture
def default() -> Normalizer:
    return Normalizer(plan_from(MAPPINGS / "telemetry.toml"))


# --------------------------------------------------------------------------- crash barrier
# A bug is planted in the plan the core runs, not in a subclass of it: the
# compiled core (setup.py) takes no interpreted subclass.
POISON = b'{"schema_version":1,"device":"POISON","ts":"POISON","metrics":{"t":1}}'


def failing(plan: Plan) -> Normalizer:
    """A normalizer with a bug: parsing the event time ``POISON`` fails."""
    (mapping,) = plan.mappings
    parse = mapping.ts_parser

    def buggy(raw: Any) -> int:
        if raw == "POISON":
            raise ZeroDivisionError("division by zero")
        return parse(raw)

    mappings = (dataclasses.replace(mapping, ts_parser=buggy),)
    return Normalizer(dataclasses.replace(plan, mappings=mappings))


class BrokenFilter(TopicFilter):
    """A topic filter with a bug: matching fails."""

    def match(self, topic_levels: list[str]) -> dict[str, str] | None:
        raise KeyError("/".join(topic_levels))


def test_an_exception_in_the_core_becomes_an_internal_error_dead_letter() -> None:
    normalizer = failing(plan_from(MAPPINGS / "telemetry.toml"))
    payload = POISON
    outcome = normalizer.process("tenant/t1/device/POISON/telemetry", payload, NOW)
    assert outcome.mapping == "telemetry"
    assert isinstance(outcome.error, ZeroDivisionError)
    assert outcome.dead == ["internal_error"]
    (letter,) = values(outcome, "telemetry.dlq")
    assert letter["reason"] == "internal_error"
    assert letter["detail"].startswith(
        "ZeroDivisionError: the bridge failed on this message ('division by zero')"
    )
    assert letter["payload"] == payload.decode()  # the original bytes, to report the bug
    assert [r.topic for r in outcome.records] == ["telemetry.dlq"]
    # The next message is processed as usual.
    assert normalizer.process(TOPIC, VALID, NOW).clean == 1


def test_an_exception_before_any_mapping_is_known_is_reported_without_a_record() -> None:
    plan = plan_from(MAPPINGS / "telemetry.toml")
    (mapping,) = plan.mappings
    broken = dataclasses.replace(mapping, filter=BrokenFilter(**vars(mapping.filter)))
    outcome = Normalizer(dataclasses.replace(plan, mappings=(broken,))).process(TOPIC, VALID, NOW)
    assert (outcome.mapping, outcome.records, outcome.dead) == (None, [], ["internal_error"])
    assert isinstance(outcome.error, KeyError)


def test_when_even_the_dead_letter_cannot_be_made_the_failure_is_only_reported(
    default: Normalizer,
) -> None:
    """A topic the MQTT layer never delivers (a lone surrogate cannot be
    encoded): the refusal's dead letter fails, and so would the internal_error
    one; the barrier still returns."""
    outcome = default.process("tenant/t1/device/\ud800/telemetry", VALID, NOW)
    assert (outcome.mapping, outcome.records, outcome.dead) == ("telemetry", [], ["internal_error"])
    assert isinstance(outcome.error, UnicodeEncodeError)


def test_ingest_counts_logs_and_produces_the_internal_error_and_goes_on() -> None:
    producer = KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9"))  # produce() only queues
    stats = IngestStats()
    ingest = Ingest(failing(plan_from(MAPPINGS / "telemetry.toml")), producer, stats, Session())
    batch = [
        InboundMessage("tenant/t1/device/POISON/telemetry", POISON, 1, False, 1, None),
        InboundMessage(TOPIC, VALID, 1, False, 2, None),
    ]
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            ingest.handle_batch(batch, generation=1)
    assert stats.internal_errors == 3
    assert stats.dead_letters == {"internal_error": 3}
    assert stats.received["telemetry"] == 6
    assert ingest.in_flight == 6  # each waits for its records (a dead letter), then its ack
    (logged,) = [e for e in logs if e["event"] == "ingest.internal_error"]  # sampled
    assert logged["error"] == "ZeroDivisionError: division by zero"
    assert isinstance(logged["exc_info"], ZeroDivisionError)  # rendered as a traceback


def test_try_mapping_prints_the_dead_letter_and_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mapping = str(MAPPINGS / "telemetry.toml")
    code = main(["try-mapping", mapping, "--topic", TOPIC, "--payload", deep(3000).decode()])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    assert json.loads(out)["records"][0]["value"]["reason"] == "too_deep"


# --------------------------------------------------------------------------- Kafka's size
def test_no_record_is_larger_than_kafka_takes(plan: Callable[[str], Plan]) -> None:
    """librdkafka raises from produce() for a record over message.max.bytes:
    the payload bound follows Kafka's, and a dead letter whose copy of the
    payload would pass it (escaping makes it up to six times larger) goes
    without the copy.  Through the real producer: nothing raises."""
    normalizer = Normalizer(plan("[limits]\nmax_payload_bytes = 2_000_000\n"))
    big = b'{"schema_version":1,"metrics":{"t":1},"pad":"' + b"x" * 1_500_000 + b'"}'
    ((reason, detail),) = letters(normalizer.process(TOPIC, big, NOW))
    assert (reason, detail) == (
        "payload_too_large",
        f"payload is {len(big)} bytes, the limit is 926273",
    )
    escaped = b'{"schema_version":1,"metrics":{"t":"' + b"\x01" * 600_000  # unterminated
    outcome = normalizer.process(TOPIC, escaped, NOW)
    ((reason, detail),) = letters(outcome)
    assert reason == "invalid_json"
    assert detail.endswith("(the payload, 600036 bytes, is too large to copy here)")
    producer = KafkaProducer(KafkaSettings(bootstrap="127.0.0.1:9"))
    ingest = Ingest(normalizer, producer, IngestStats(), Session())
    batch = [
        InboundMessage(TOPIC, payload, 1, False, n, None)
        for n, payload in enumerate((big, escaped))
    ]
    ingest.handle_batch(batch, generation=1)  # would raise KafkaException MSG_SIZE_TOO_LARGE
    assert ingest.stats.dead_letters == {"payload_too_large": 1, "invalid_json": 1}
    roomy = Normalizer(
        plan(
            "[limits]\nmax_payload_bytes = 2_000_000\n"
            '[kafka.properties]\n"message.max.bytes" = "5000000"\n'
        )
    )
    assert roomy.process(TOPIC, big, NOW).clean == 1
    # A spool segment bounds records as well: the spool refuses a larger one.
    small_segments = Normalizer(plan("[spool]\nsegment_bytes = 120_000\nmax_bytes = 240_000\n"))
    outcome = small_segments.process(TOPIC, escaped[:50_000], NOW)
    assert letters(outcome)[0][1].endswith("bytes, is too large to copy here)")
    assert all(len(r.value) < 60_000 for r in outcome.records)


def test_the_dead_letters_of_one_message_copy_its_payload_a_bounded_number_of_times(
    default: Normalizer,
) -> None:
    metrics = ",".join(f'"m{n}":null' for n in range(256))
    payload = '{"schema_version":1,"metrics":{' + metrics + '},"pad":"' + "x" * 60_000 + '"}'
    outcome = default.process(TOPIC, payload.encode(), NOW)
    dead = values(outcome, "telemetry.dlq")
    assert len(dead) == 256
    copied = [letter for letter in dead if letter["payload"]]
    assert len(copied) == (1 << 20) // len(payload)  # 16 copies of 65 KB, not 256
    assert all(letter["payload"] == payload for letter in copied)
    assert dead[-1]["detail"].endswith("(the payload is in this message's first dead letter)")
    assert sum(len(r.value) for r in outcome.records) < 2 << 20


# --------------------------------------------------------------------------- item 1: depth
@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"", 0),
        (b"1", 0),
        (b"{}", 1),
        (b'{"a":[1,{"b":[]}]}', 4),
        (b'{"a":"[[[[[[[[[[[["}', 1),  # brackets in a string are text
        (b'{"a":"\\"[[[[[[[", "b":"\\\\"}', 1),  # escaped quote and backslash
        (b'{"a":"x\\\\"}' + b"[[[", 3),  # a string ending in a backslash
        (b"[]" * 500, 1),
        (b"[[[[", 4),  # unbalanced: measured as far as it goes
    ],
)
def test_nesting_depth_is_measured_outside_strings(text: bytes, depth: int) -> None:
    assert nesting_depth(text, 64) == depth


def test_a_run_of_openers_deeper_than_the_limit_is_found_without_a_full_scan() -> None:
    assert nesting_depth(b"[" * 100_000, 64) == 65


def test_nesting_at_the_limit_passes_and_one_more_is_too_deep(default: Normalizer) -> None:
    assert default.process(TOPIC, deep(63), NOW).clean == 1  # 1 object + 63 arrays
    assert reasons(default.process(TOPIC, deep(64), NOW)) == [("too_deep", None)]
    # Invalid JSON nested too deeply is refused as too deep: depth is checked first.
    assert reasons(default.process(TOPIC, deep(64, b"{", b"}"), NOW)) == [("too_deep", None)]
    objects = b'{"schema_version":1,"metrics":{"t":1},"x":' + b'{"a":' * 64 + b"1" + b"}" * 65
    assert reasons(default.process(TOPIC, objects, NOW)) == [("too_deep", None)]


def test_the_issues_poison_message_is_a_dead_letter(default: Normalizer) -> None:
    outcome = default.process("tenant/t6/device/DEEP/telemetry", deep(3000), NOW)
    assert letters(outcome) == [
        (
            "too_deep",
            "payload nests at least 65 levels deep, the limit is limits.max_json_depth = 64",
        )
    ]
    assert outcome.records[0].value.count(b"[") == 3000  # the original bytes are kept


def test_many_brackets_that_do_not_nest_are_not_too_deep(default: Normalizer) -> None:
    wide = b'{"schema_version":1,"metrics":{"t":1},"x":[' + b"[1]," * 2000 + b"[]]}"
    assert default.process(TOPIC, wide, NOW).clean == 1
    in_strings = b'{"schema_version":1,"metrics":{"t":"' + b"[" * 200 + b'"}}'
    assert default.process(TOPIC, in_strings, NOW).clean == 1


def test_max_json_depth_is_a_setting_with_a_range(plan: Callable[[str], Plan]) -> None:
    shallow = Normalizer(plan("[limits]\nmax_json_depth = 2\n"))
    assert shallow.process(TOPIC, VALID, NOW).clean == 1  # {"metrics": {...}} is 2 deep
    assert shallow.process(TOPIC, deep(1), NOW).clean == 1
    assert reasons(shallow.process(TOPIC, deep(2), NOW)) == [("too_deep", None)]
    for bad in (0, 513):
        with pytest.raises(PlanError, match=r"limits.max_json_depth: must be between 1 and 512"):
            plan(f"[limits]\nmax_json_depth = {bad}\n")


# --------------------------------------------------------------------------- item 2: numbers
HUGE = "1" + "0" * 309


@pytest.mark.parametrize("fmt", ["auto", "epoch_ms", "epoch_s"])
@pytest.mark.parametrize("ts", [HUGE, "-" + HUGE, "1e306", "-1e306", "1.7976931348623157e308"])
def test_huge_timestamps_are_invalid_ts_naming_the_field(
    plan: Callable[[str], Plan], fmt: str, ts: str
) -> None:
    normalizer = Normalizer(
        plan(f'[[mappings]]\npayload = {{ ts = {{ field = "sent.at", format = "{fmt}" }} }}\n')
    )
    payload = f'{{"schema_version":1,"metrics":{{"t":1}},"sent":{{"at":{ts}}}}}'.encode()
    ((reason, detail),) = letters(normalizer.process(TOPIC, payload, NOW))
    assert reason == "invalid_ts"
    assert detail.startswith("sent.at: ")
    assert detail.endswith("is outside 2000-01-01..2100-01-01")
    assert len(detail) < 100  # a 310-digit number is described, not copied


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity"])
def test_numbers_json_cannot_hold_are_invalid_json(default: Normalizer, number: str) -> None:
    payload = f'{{"schema_version":1,"metrics":{{"t":{number}}}}}'.encode()
    assert reasons(default.process(TOPIC, payload, NOW)) == [("invalid_json", None)]


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (str(2**63 - 1), None),
        (str(-(2**63)), None),
        ("1e306", None),
        (str(2**63), "value_out_of_range"),
        (str(-(2**63) - 1), "value_out_of_range"),
        (HUGE, "value_out_of_range"),
    ],
)
def test_integer_values_must_fit_in_64_bits(
    default: Normalizer, number: str, reason: str | None
) -> None:
    payload = f'{{"schema_version":1,"metrics":{{"t":{number},"ok":1}}}}'.encode()
    outcome = default.process(TOPIC, payload, NOW)
    assert reasons(outcome) == ([(reason, "t")] if reason else [])
    assert outcome.clean == (1 if reason else 2)


def test_declared_numeric_fields_bound_numbers_sent_as_strings(
    plan: Callable[[str], Plan],
) -> None:
    gps = Normalizer(plan_from(MAPPINGS / "gps_tracker.toml"))
    fix = {
        "data": {
            "DEVICE_ID": "0848086072",
            "LATITUD": "1" + "0" * 30,
            "LONGITUD": "1e400",
            "SPEED": 2**64,
            "SATELLITES": "9",
            "ENGINE_STATUS": "ON",
            "GPS_DATETIME": "2025-10-18 00:51:16",
        },
        "uuid": "u1",
    }
    outcome = gps.process("gps/t1/tracker", json.dumps(fix).encode(), NOW)
    assert letters(outcome) == [
        (
            "value_out_of_range",
            "data.LATITUD: 1000000000000000000000000000000 does not fit in a 64-bit integer",
        ),
        ("coercion_failed", "data.LONGITUD: '1e400' is not a number, rule numeric"),
        ("value_out_of_range", "data.SPEED: 18446744073709551616 does not fit in a 64-bit integer"),
    ]
    assert outcome.clean == 2


# --------------------------------------------------------------------------- item 14: identities
@pytest.mark.parametrize(
    "device", ["C27:x y", "C27 x", "DEV\u202e1", "DEV\u200b1", "Gerät", "DEV\t1", "a@b", "x%2F"]
)
def test_tenant_and_device_segments_outside_the_safe_set_are_invalid_topic(
    default: Normalizer, device: str
) -> None:
    outcome = default.process(f"tenant/t5/device/{device}/telemetry", VALID, NOW)
    assert letters(outcome) == [
        (
            "invalid_topic",
            "topic segment {device} does not match limits.identifier_pattern '[A-Za-z0-9._-]+'",
        )
    ]
    bad_tenant = default.process(f"tenant/{device}/device/D1/telemetry", VALID, NOW)
    assert reasons(bad_tenant) == [("invalid_topic", None)]


def test_a_device_from_a_payload_field_is_held_to_the_same_set() -> None:
    gps = Normalizer(plan_from(MAPPINGS / "gps_tracker.toml"))
    fix = {"data": {"DEVICE_ID": "08:48", "GPS_DATETIME": "2025-10-18 00:51:16"}, "uuid": "u"}
    assert letters(gps.process("gps/t1/tracker", json.dumps(fix).encode(), NOW)) == [
        (
            "invalid_field",
            "device '08:48' does not match limits.identifier_pattern '[A-Za-z0-9._-]+'",
        )
    ]


def test_the_safe_set_is_configurable(plan: Callable[[str], Plan]) -> None:
    unicode = Normalizer(plan("[limits]\nidentifier_pattern = '[\\w.-]+'\n"))
    assert unicode.process("tenant/t5/device/Gerät-7/telemetry", VALID, NOW).clean == 1
    assert reasons(unicode.process("tenant/t5/device/a:b/telemetry", VALID, NOW)) == [
        ("invalid_topic", None)
    ]
    with pytest.raises(PlanError, match=r"limits.identifier_pattern: not a regular expression"):
        plan("[limits]\nidentifier_pattern = '[a-z'\n")


def test_duplicate_keys_the_last_one_wins(default: Normalizer) -> None:
    """msgspec keeps the last of duplicate keys and cannot report them without a
    second parse as costly as the first: the bridge documents last-wins, and the
    identity it writes is the topic's, checked against the last claim."""
    last_matches = b'{"schema_version":1,"device":"EVIL","device":"DEV-001","metrics":{"t":1}}'
    (record,) = values(default.process(TOPIC, last_matches, NOW), "telemetry.clean")
    assert record["device_serial_id"] == "DEV-001"
    first_matches = b'{"schema_version":1,"device":"DEV-001","device":"EVIL","metrics":{"t":1}}'
    assert reasons(default.process(TOPIC, first_matches, NOW)) == [("device_mismatch", None)]
    metrics = b'{"schema_version":1,"metrics":{"t":1,"t":2}}'
    (record,) = values(default.process(TOPIC, metrics, NOW), "telemetry.clean")
    assert record["value"] == 2


# --------------------------------------------------------------------------- item 12: tenants
REGISTRY = """
[devices.acme.DEV-A]
[devices.othercorp.DEV-B]
[devices.acme.SHARED-1]
[devices.othercorp.SHARED-1]
"""


def test_the_registry_binds_each_device_to_its_tenants(plan: Callable[[str], Plan]) -> None:
    normalizer = Normalizer(plan(REGISTRY))
    assert normalizer.process("tenant/acme/device/DEV-A/telemetry", VALID, NOW).clean == 1
    crossed = normalizer.process("tenant/othercorp/device/DEV-A/telemetry", VALID, NOW)
    assert letters(crossed) == [
        (
            "device_tenant_mismatch",
            "device 'DEV-A' is registered for tenant 'acme', not for 'othercorp'",
        )
    ]
    for tenant in ("acme", "othercorp"):  # a serial registered for two tenants is two devices
        assert normalizer.process(f"tenant/{tenant}/device/SHARED-1/telemetry", VALID, NOW).clean
    shared = normalizer.process("tenant/third/device/SHARED-1/telemetry", VALID, NOW)
    assert letters(shared)[0][1] == (
        "device 'SHARED-1' is registered for tenant 'acme' and 'othercorp', not for 'third'"
    )
    unknown = normalizer.process("tenant/acme/device/DEV-Z/telemetry", VALID, NOW)
    assert reasons(unknown) == [("unknown_device", None)]


# --------------------------------------------------------------------------- item 13: alarms
T0 = 1_772_028_000_000


def hot(alarms: AlarmEvaluator, device: str, value: float = 90.0) -> list[str]:
    ts = T0 + 1000
    return [r.state for r in alarms.observe("t1", device, "temp", value, ts, format_ms(ts))]


def test_alarm_state_is_bounded_least_recently_seen_first() -> None:
    alarms = AlarmEvaluator({"temp": MetricSpec(alarms=[AlarmRule("above", 50.0)])}, 3)
    assert hot(alarms, "D1") == ["raised"]
    hot(alarms, "D2", 10.0)
    hot(alarms, "D3", 10.0)
    assert hot(alarms, "D1") == []  # still raised: D1 is now the most recently seen
    hot(alarms, "D4", 10.0)  # forgets D2, the least recently seen
    assert (len(alarms), alarms.evicted) == (3, 1)
    assert hot(alarms, "D1", 10.0) == ["cleared"]  # D1's state was kept
    for n in range(5, 1005):
        hot(alarms, f"D{n}", 10.0)
    assert (len(alarms), alarms.evicted) == (3, 1001)


def test_a_reload_keeps_alarm_state_with_the_new_bound(plan: Callable[[str], Plan]) -> None:
    rules = '[metrics.t]\nalarms = [{ kind = "above", threshold = 5.0 }]\n'
    first = Normalizer(plan(rules))
    for n in range(10):
        first.process(f"tenant/t1/device/D{n}/telemetry", VALID, NOW)
    assert len(first.alarms) == 10
    second = Normalizer(plan(rules + "[limits]\nmax_alarm_series = 4\n"), previous=first)
    assert (second.alarms is first.alarms, len(second.alarms), second.alarms.evicted) == (
        True,
        4,
        6,
    )
    changed = '[metrics.t]\nalarms = [{ kind = "above", threshold = 7.0 }]\n'
    third = Normalizer(plan(changed), previous=second)
    assert (len(third.alarms), third.alarms.evicted) == (0, 6)  # new rules, the count goes on
    with pytest.raises(PlanError, match=r"limits.max_alarm_series: must be at least 1"):
        plan("[limits]\nmax_alarm_series = 0\n")
