"""Sparkplug B through the normalizer and mappings/sparkplug.toml: the exact
records of births and aliased data, events, raw bytes, base64 dead letters for
every reason the Sparkplug core can give, rebirth commands, the extraction
rules, catalog and registry, and the config checks."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from bridge.cli import main
from bridge.config_loader import load_config
from bridge.console.deadletters import letter_tenant
from bridge.core.normalize import Normalizer
from bridge.core.plan import PlanError, compile_config
from bridge.core.records import DeadLetter
from tests.support import sparkplug_encoder as enc
from tests.unit.core_fixtures import (
    MAPPINGS,
    NOW,
    REPO,
    normalizer_for,
    plan_from,
    records,
    values,
)

WriteConfig = Callable[..., Path]
TS = 1_772_028_000_000
ISO = "2026-02-25T14:00:00Z"
RECEIVED = NOW.iso
NBIRTH = enc.node_birth(
    [enc.metric("temp", alias=1, datatype=enc.DOUBLE, value=20.5)], seq=0, bd_seq=1, timestamp=TS
)
DBIRTH = enc.payload(
    [
        enc.metric("rpm", alias=10, datatype=enc.UINT16, value=1200),
        enc.metric("state", alias=11, datatype=enc.STRING, value="run"),
    ],
    seq=1,
    timestamp=TS,
)


@pytest.fixture
def spb() -> Normalizer:
    return normalizer_for(MAPPINGS / "sparkplug.toml")


def born(normalizer: Normalizer) -> Normalizer:
    normalizer.process("spBv1.0/plant/NBIRTH/gw", NBIRTH, NOW)
    normalizer.process("spBv1.0/plant/DBIRTH/gw/pump", DBIRTH, NOW)
    return normalizer


def headers(device: str, kind: str) -> list[tuple[str, str]]:
    return [
        ("tenant", "plant"),
        ("device", device),
        ("mqtt_topic", f"spBv1.0/plant/{kind}/{device}"),
        ("schema_version", "1"),
        ("sparkplug_type", kind),
    ]


def clean(device: str, metric: str, kind: str, value: str, ts: str = ISO) -> bytes:
    return (
        f'{{"tenant":"plant","device_serial_id":"{device}","metric":"{metric}",'
        f'"metric_type":"{kind}","value":{value},"ts":"{ts}","received_at":"{RECEIVED}",'
        f'"schema_version":1}}'
    ).encode()


def test_births_become_clean_records_an_online_event_and_the_raw_bytes(spb: Normalizer) -> None:
    outcome = spb.process("spBv1.0/plant/DBIRTH/gw/pump", DBIRTH, NOW)
    hdr = headers("gw/pump", "DBIRTH")
    assert records(outcome) == [
        ("telemetry.clean", "plant:gw/pump", hdr, clean("gw/pump", "rpm", "numeric", "1200")),
        ("telemetry.clean", "plant:gw/pump", hdr, clean("gw/pump", "state", "str", '"run"')),
        (
            "telemetry.events",
            "plant:gw/pump",
            [*hdr, ("event", "online")],
            b'{"tenant":"plant","device_serial_id":"gw/pump","event":"online","ts":"'
            + ISO.encode()
            + b'"}',
        ),
        ("telemetry.raw", "plant:gw/pump", [*hdr, ("received_at", RECEIVED)], DBIRTH),
    ]
    # The node's birth: bdSeq and Node Control/* are bookkeeping, not records.
    outcome = spb.process("spBv1.0/plant/NBIRTH/gw", NBIRTH, NOW)
    assert [v["metric"] for v in values(outcome, "telemetry.clean")] == ["temp"]
    assert values(outcome, "telemetry.events")[0]["device_serial_id"] == "gw"


def test_aliased_data_resolves_to_exact_records(spb: Normalizer) -> None:
    born(spb)
    data = enc.payload(
        [
            enc.metric(alias=10, datatype=enc.UINT16, value=1300, timestamp=TS + 250),
            enc.metric(alias=11, datatype=enc.STRING, value="stop"),
        ],
        seq=2,
        timestamp=TS + 1000,
    )
    outcome = spb.process("spBv1.0/plant/DDATA/gw/pump", data, NOW)
    hdr = headers("gw/pump", "DDATA")
    assert records(outcome) == [
        (
            "telemetry.clean",
            "plant:gw/pump",
            hdr,
            clean("gw/pump", "rpm", "numeric", "1300", "2026-02-25T14:00:00.250Z"),
        ),
        (
            "telemetry.clean",
            "plant:gw/pump",
            hdr,
            clean("gw/pump", "state", "str", '"stop"', "2026-02-25T14:00:01Z"),
        ),
        ("telemetry.raw", "plant:gw/pump", [*hdr, ("received_at", RECEIVED)], data),
    ]
    assert spb.sparkplug is not None
    assert spb.sparkplug.take_commands() == []


def test_an_unknown_alias_is_a_base64_dead_letter_and_queues_one_rebirth(spb: Normalizer) -> None:
    born(spb)
    data = enc.payload([enc.metric(alias=77, datatype=enc.INT32, value=1)], seq=2)
    outcome = spb.process("spBv1.0/plant/DDATA/gw/pump", data, NOW)
    (letter,) = values(outcome, "telemetry.dlq")
    assert (letter["reason"], letter["metric"], letter["payload_encoding"]) == (
        "unknown_alias",
        "alias 77",
        "base64",
    )
    assert base64.b64decode(letter["payload"]) == data
    assert spb.sparkplug is not None
    ((topic, payload),) = spb.sparkplug.take_commands()
    assert topic == "spBv1.0/plant/NCMD/gw"
    (metric,) = enc.read_metrics(payload)
    assert (metric[1], metric[14]) == (b"Node Control/Rebirth", 1)
    spb.process("spBv1.0/plant/DDATA/gw/pump", enc.payload([], seq=3), NOW)
    assert spb.sparkplug.take_commands() == []  # rate-limited per node


def test_strings_that_are_not_utf8_are_dead_letters_per_metric(spb: Normalizer) -> None:
    """Sparkplug B is proto2, where protobuf returns a string field holding
    invalid UTF-8 as bytes instead of refusing it: such a name or value is
    refused by its metric (the others still become records), never passed on
    as bytes nor left to fail as a bug."""
    born(spb)
    data = enc.payload(
        [
            enc.metric(b"bad\xff", datatype=enc.INT32, value=1),
            enc.metric(alias=11, datatype=enc.STRING, value=b"st\xc3op"),
            enc.metric(alias=10, datatype=enc.UINT16, value=1300),
        ],
        seq=2,
    )
    outcome = spb.process("spBv1.0/plant/DDATA/gw/pump", data, NOW)
    assert outcome.error is None
    letters = values(outcome, "telemetry.dlq")
    assert [(v["reason"], v.get("metric")) for v in letters] == [
        ("invalid_metric_name", None),
        ("metric_type_invalid", "state"),
    ]
    assert "not valid UTF-8" in letters[0]["detail"]
    assert [v["metric"] for v in values(outcome, "telemetry.clean")] == ["rpm"]
    # A birth: the metric with such a name is refused, the rest is born.
    birth = enc.payload(
        [
            enc.metric(b"\xfe", alias=20, datatype=enc.INT32, value=1),
            enc.metric("flow", alias=21, datatype=enc.DOUBLE, value=2.5),
        ],
        seq=3,
    )
    outcome = spb.process("spBv1.0/plant/DBIRTH/gw/valve", birth, NOW)
    assert outcome.error is None
    assert [v["reason"] for v in values(outcome, "telemetry.dlq")] == ["invalid_metric_name"]
    assert [v["metric"] for v in values(outcome, "telemetry.clean")] == ["flow"]


def test_a_gap_is_noted_for_the_log(spb: Normalizer) -> None:
    born(spb)
    spb.process("spBv1.0/plant/NDATA/gw", enc.payload([], seq=9), NOW)
    assert spb.sparkplug is not None
    assert spb.sparkplug.take_gaps() == [("spBv1.0/plant/NDATA/gw", 2, 9)]
    assert spb.sparkplug.state.counters.seq_gaps == 1


def test_ndeath_makes_offline_events_for_the_node_and_its_devices(spb: Normalizer) -> None:
    born(spb)
    outcome = spb.process("spBv1.0/plant/NDEATH/gw", enc.node_death(1, timestamp=TS), NOW)
    assert [(v["device_serial_id"], v["event"]) for v in values(outcome, "telemetry.events")] == [
        ("gw", "offline"),
        ("gw/pump", "offline"),
    ]
    assert values(outcome, "telemetry.clean") == []


def test_commands_and_host_state_make_nothing(spb: Normalizer) -> None:
    for topic in ("spBv1.0/plant/NCMD/gw", "spBv1.0/plant/DCMD/gw/pump", "spBv1.0/STATE/scada"):
        outcome = spb.process(topic, b'{"online": true}', NOW)
        assert (outcome.mapping, outcome.records) == ("sparkplug", [])


SPB = """
[[mappings]]
name = "spb"
mqtt = { topic = "spBv1.0/{group}/#" }
kafka = { key = "{group}|{edge_node}", raw_enabled = false }
[mappings.payload]
format = "sparkplug_b"
tenant = { const = "acme" }
device = { segment = "edge_node", case = "upper" }
"""


def test_the_extraction_rules_key_template_catalog_and_registry_apply(
    tmp_config: WriteConfig,
) -> None:
    config = (
        SPB
        + """
[metrics.temp]
unit = "°C"
max = 100
[devices.acme.GW]
"""
    )
    normalizer = normalizer_for(tmp_config(config))
    birth = enc.node_birth(
        [
            enc.metric("temp", alias=1, datatype=enc.FLOAT, value=150.0),
            enc.metric("other", alias=2, datatype=enc.INT8, value=-1),
        ]
    )
    outcome = normalizer.process("spBv1.0/plant/NBIRTH/gw", birth, NOW)
    assert [(v["reason"], v["metric"]) for v in values(outcome, "telemetry.dlq")] == [
        ("value_out_of_range", "temp"),
        ("unknown_metric", "other"),
    ]
    data = enc.payload([enc.metric(alias=1, datatype=enc.FLOAT, value=21.0)], seq=1)
    outcome = normalizer.process("spBv1.0/plant/NDATA/gw", data, NOW)
    ((_, key, _, _),) = [r for r in records(outcome) if r[0] == "telemetry.clean"]
    (record,) = values(outcome, "telemetry.clean")
    assert (key, record["tenant"], record["device_serial_id"], record["unit"]) == (
        "plant|gw",
        "acme",
        "GW",
        "°C",
    )
    # Not in the registry: the whole message is refused.
    outcome = normalizer.process("spBv1.0/plant/NBIRTH/other", birth, NOW)
    assert [v["reason"] for v in values(outcome, "telemetry.dlq")] == ["unknown_device"]
    assert normalizer.sparkplug is not None
    assert normalizer.sparkplug.take_commands() == []  # rebirth is off by default


# Every reason the Sparkplug core can give, with its detail, through the mapping.
REASONS: list[tuple[str, bytes, str, str, str | None]] = [
    (
        "spBv1.0/plant/DDATA/gw/pump",
        b"\x12\x05ab",
        "invalid_protobuf",
        "payload is not a Sparkplug B protobuf Payload message",
        None,
    ),
    (
        "spBv1.0/plant/DDATA/gw/pump",
        enc.payload([enc.metric(alias=5, datatype=enc.INT32, value=1)], seq=2),
        "unknown_alias",
        "alias 5 is in no birth certificate seen for this node or device (a rebirth is "
        "requested when the mapping allows)",
        "alias 5",
    ),
    (
        "spBv1.0/plant/DDATA/gw/pump",
        enc.payload([enc.metric("t", datatype=enc.DATASET, value=1)], seq=2),
        "unsupported_datatype",
        "metric 't' is a DataSet, which has no single value a record can hold "
        "(supported: integers, Float, Double, Boolean, String, Text, UUID, DateTime)",
        "t",
    ),
    (
        "spBv1.0/plant/DDATA/gw/pump",
        enc.payload([enc.metric("t", value=None)], seq=2),
        "unsupported_datatype",
        "metric 't' has no datatype here nor in a birth certificate",
        "t",
    ),
    (
        "spBv1.0/plant/DBIRTH/gw/pump",
        enc.payload([enc.metric("t")], seq=2),
        "unsupported_datatype",
        "birth metric 't' has no datatype",
        "t",
    ),
    (
        "spBv1.0/plant/DDATA/gw/pump",
        enc.payload([enc.metric("t", datatype=enc.BOOLEAN) + b"\x50\x01"], seq=2),
        "metric_type_invalid",
        "metric 't' is a Boolean but its value is in int_value",
        "t",
    ),
    (
        "spBv1.0/plant/DDATA/gw/pump",
        enc.payload([enc.metric(timestamp=1)], seq=2),
        "invalid_metric_name",
        "a metric has no name or alias",
        None,
    ),
    (
        "spBv1.0/plant/DBIRTH/gw/pump",
        enc.payload([enc.metric(alias=3, datatype=enc.INT8, value=1)], seq=2),
        "invalid_metric_name",
        "a birth metric has no name",
        None,
    ),
    (
        "spBv1.0/plant/DDATA/gw",
        b"",
        "invalid_topic",
        "topic 'spBv1.0/plant/DDATA/gw': 'DDATA' is not a Sparkplug message type for this level",
        None,
    ),
    (
        "spBv1.0/plant/DBIRTH/gw/valve",
        DBIRTH,
        "too_many_devices",
        "the bridge already tracks 2 Sparkplug nodes and devices",
        None,
    ),
    (
        "spBv1.0/plant/DDATA/gw/pump",
        enc.payload([enc.metric("u", datatype=enc.UINT64, value=2**63)], seq=2),
        "value_out_of_range",
        "metric 'u': UInt64 9223372036854775808 does not fit 64 signed bits",
        "u",
    ),
    (
        "spBv1.0/plant/NDATA/gw",
        enc.payload([enc.metric("m", datatype=enc.INT8, value=1)] * 3),
        "too_many_metrics",
        "3 metrics, the limit is 2",
        None,
    ),
    (
        "spBv1.0/plant/NDATA/gw",
        b"\x00" * 300,
        "payload_too_large",
        "payload is 300 bytes, the limit is 256",
        None,
    ),
]
LIMITS = "[limits]\nmax_payload_bytes = 256\nmax_metrics = 2\n"


@pytest.mark.parametrize("row", REASONS, ids=[f"{row[2]}-{n}" for n, row in enumerate(REASONS)])
def test_dead_letter_reason_and_detail(
    tmp_config: WriteConfig, row: tuple[str, bytes, str, str, str | None]
) -> None:
    topic, payload, reason, detail, metric = row
    normalizer = born(normalizer_for(tmp_config(LIMITS + SPB)))
    assert normalizer.sparkplug is not None
    normalizer.sparkplug.state.max_entities = 2
    outcome = normalizer.process(topic, payload, NOW)
    letters = values(outcome, "telemetry.dlq")
    assert [(v["reason"], v["detail"], v.get("metric")) for v in letters] == [
        (reason, detail, metric)
    ]
    (letter,) = letters
    if reason != "payload_too_large":
        assert (letter["payload_encoding"], base64.b64decode(letter["payload"])) == (
            "base64",
            payload,
        )


def test_the_table_covers_every_reason_the_sparkplug_core_can_give() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "bridge" / "core").glob("sparkplug*.py"))
    emitted = set(re.findall(r'InputRejected\(\s*"([a-z_]+)"', source))
    assert emitted == {row[2] for row in REASONS}


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            'mqtt = { topic = "plant/#" }',
            "mqtt.topic: a sparkplug_b mapping's filter starts with spBv1.0/",
        ),
        (
            'payload.fields.t = { field = "t" }',
            "payload: a sparkplug_b payload names its own metrics",
        ),
        ("dedup = { window_s = 5 }", "dedup: Sparkplug B messages carry no event id"),
        (
            "kafka = { clean_enabled = false }",
            "kafka.clean_enabled: a sparkplug_b mapping reads every payload",
        ),
        ('sparkplug = { events_topic = "" }', "sparkplug.events_topic: empty Kafka topic name"),
        (
            "sparkplug = { rebirth_interval_s = 0 }",
            "sparkplug.rebirth_interval_s: must be positive",
        ),
        (
            'payload.tenant = { segment = "site" }',
            "payload.tenant.segment: segment {site} is not in",
        ),
    ],
)
def test_config_mistakes_are_named(tmp_config: WriteConfig, extra: str, error: str) -> None:
    text = (
        '[[mappings]]\nname = "s"\nmqtt = { topic = "spBv1.0/#" }\npayload.format = "sparkplug_b"\n'
    )
    lines = [
        line
        for line in text.splitlines()
        if not (extra.startswith("mqtt") and line.startswith("mqtt"))
    ]
    path = tmp_config("\n".join([*lines, extra]) + "\n")
    with pytest.raises(PlanError) as caught:
        compile_config(load_config(path))
    assert any(error in line for line in caught.value.errors), caught.value.errors


def test_json_mappings_have_no_sparkplug_side(tmp_config: WriteConfig) -> None:
    assert normalizer_for(tmp_config("")).sparkplug is None


def test_the_state_is_shared_across_reloads(spb: Normalizer) -> None:
    born(spb)
    assert spb.sparkplug is not None
    again = Normalizer(spb.plan, previous=spb, sparkplug_state=spb.sparkplug.state)
    data = enc.payload([enc.metric(alias=10, datatype=enc.UINT16, value=1)], seq=2)
    (record,) = values(again.process("spBv1.0/plant/DDATA/gw/pump", data, NOW), "telemetry.clean")
    assert record["metric"] == "rpm"
    assert json.loads(again.sparkplug.state.snapshot() if again.sparkplug else b"{}")["nodes"]


def test_try_mapping_reads_a_payload_file_and_explains_the_alias_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dbirth.bin").write_bytes(DBIRTH)
    data = enc.payload([enc.metric(alias=11, datatype=enc.STRING, value="stop")], seq=2)
    (tmp_path / "ddata.bin").write_bytes(data)
    code = main(
        [
            "try-mapping",
            str(MAPPINGS / "sparkplug.toml"),
            "--topic",
            "spBv1.0/plant/DDATA/gw/pump",
            "--payload-file",
            str(tmp_path / "ddata.bin"),
            "--birth-file",
            str(tmp_path / "dbirth.bin"),
        ]
    )
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    clean, raw = shown["records"]
    assert (clean["value"]["metric"], clean["value"]["value"]) == ("state", "stop")
    assert base64.b64decode(raw["value"]["base64"]) == data
    assert shown["sparkplug"]["data_would_resolve"]["spBv1.0/plant/DDATA/gw/pump"] == {
        "alias 10": "rpm (UInt16)",
        "alias 11": "state (String)",
    }
    assert shown["sparkplug"]["alias_tables"]["plant/gw/pump"]["metrics"][0] == {
        "name": "rpm",
        "datatype": "UInt16",
        "alias": 10,
    }


def test_the_console_tells_a_sparkplug_dead_letters_tenant() -> None:
    plan = plan_from(MAPPINGS / "sparkplug.toml")
    letter = DeadLetter(
        reason="invalid_protobuf",
        detail="payload is not a Sparkplug B protobuf Payload message",
        mqtt_topic="spBv1.0/plant/DDATA/gw/pump",
        mapping="sparkplug",
        payload="AAA=",
        payload_encoding="base64",
        received_at=RECEIVED,
    )
    assert letter_tenant(plan, letter) == "plant"
    assert letter_tenant(plan, msgspec.structs.replace(letter, mqtt_topic="spBv1.0/x")) is None


def test_a_stream_cannot_read_a_sparkplug_mappings_raw_topic_again(
    tmp_config: WriteConfig,
) -> None:
    path = tmp_config(
        SPB
        + """
[[streams]]
name = "raw"
auth = "jwt"
websocket_path = "/raw"
envelope = { kind = "message" }
source = { topics = ["telemetry.raw"], read = "mapping", mapping = "spb" }
"""
    )
    with pytest.raises(PlanError) as caught:
        compile_config(load_config(path))
    assert caught.value.errors == [
        "streams[0].source.mapping: 'spb' is a sparkplug_b mapping: its raw records need the"
        ' alias tables of their births; read its clean topic with read = "clean" instead'
    ]
