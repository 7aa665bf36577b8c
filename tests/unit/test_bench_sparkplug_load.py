"""The bench's Sparkplug B load (bench/mqtt_load.py SparkplugLoad): its births
and DDATA, taken apart as the broker would deliver them and run through the
mapping the bench configures, become exactly 10 clean records per DDATA,
with no dead letter and no seq gap."""

from __future__ import annotations

from bench.mqtt_load import LoadSpec, SparkplugLoad
from bridge.core.normalize import Normalizer
from tests.unit.core_fixtures import MAPPINGS, NOW, plan_from


def _unframe(packet: bytes) -> tuple[str, bytes]:
    """Topic and payload of a QoS 1 PUBLISH."""
    pos, length, shift = 1, 0, 0
    while True:
        byte = packet[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    size = int.from_bytes(packet[pos : pos + 2], "big")
    topic = packet[pos + 2 : pos + 2 + size].decode()
    return topic, packet[pos + 2 + size + 2 : pos + length]


def test_births_then_ddata_resolve_to_ten_records_each() -> None:
    spec = LoadSpec("127.0.0.1", 1883, "bench-load-0", 1, (0, 2, 4), 0.0, 100, 0.5, True)
    load = SparkplugLoad(spec)
    normalizer = Normalizer(plan_from(MAPPINGS / "sparkplug.toml"))
    for topic, body in [(name[2:].decode(), body) for name, body in load.births]:
        assert not normalizer.process(topic, body, NOW).dead
    outcomes = [normalizer.process(*_unframe(load.frame(i, i + 1)), NOW) for i in range(600)]
    assert {(o.clean, tuple(o.dead)) for o in outcomes} == {(10, ())}
    assert normalizer.sparkplug is not None
    assert normalizer.sparkplug.state.counters.seq_gaps == 0
