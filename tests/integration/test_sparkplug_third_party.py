"""Sparkplug B from an implementation the project did not write: an edge node
and a device published by ``mqtt-spb-wrapper`` (its own virtualenv, its own
paho 1.6 and protobuf 3.20) through mosquitto, into the real daemon, out of
Tansu as clean records and online/offline events."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.conftest import BridgeSetup
from tests.integration.test_sparkplug_daemon import mapping, scraped, seen_events
from tests.support import BridgeProcess, kafka_read, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.spb_wrapper import NODE_SCRIPT, spb_wrapper_python

COUNT = 20
# NBIRTH: ATTR/description, DATA/uptime_s and the library's own
# CMD/Node Control/Rebirth (bdSeq is not a record); DBIRTH: ATTR/serial,
# DATA/temperature, DATA/running; each DDATA: the two changed values, which
# the library names without the DATA/ prefix of its births.
EXPECTED = 3 + 3 + 2 * COUNT


@pytest.fixture(scope="session")
def wrapper_python() -> str:
    return str(spb_wrapper_python())


def test_an_edge_node_published_by_mqtt_spb_wrapper_becomes_clean_records(
    setup: BridgeSetup, wrapper_python: str
) -> None:
    mosquitto: Mosquitto = setup.mosquitto
    bridge = BridgeProcess(setup.config(mappings=mapping(setup, rebirth=False)))
    with bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        run = subprocess.run(
            [wrapper_python, "-I", str(NODE_SCRIPT), mosquitto.host, str(mosquitto.port),
             "plant9", "gw9", "pump9", str(COUNT)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=EXPECTED)
        events = kafka_read(setup.tansu.bootstrap, f"events.{setup.unique}", expected=3)
        stale = wait_until(
            lambda: scraped(setup, 'kind="stale_deaths"} 1.0'), 10, "the stale NDEATH counted"
        )
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=0, timeout=1)
        assert bridge.stop() == 0
    values = [r.json() for r in clean]
    assert len(values) == EXPECTED
    assert dlq == []
    device = [v for v in values if v["device_serial_id"] == "gw9/pump9"]
    temperatures = sorted(v["value"] for v in device if v["metric"] == "temperature")
    assert temperatures == [21.0 + n for n in range(COUNT)]
    running = [v["value"] for v in device if v["metric"] == "running"]
    assert sorted(running) == sorted(n % 2 == 0 for n in range(COUNT))
    assert {(v["metric"], v["metric_type"], v["value"]) for v in device if "/" in v["metric"]} == {
        ("ATTR/serial", "str", "SN-0001"),
        ("DATA/temperature", "numeric", 20.5),
        ("DATA/running", "bool", True),
    }
    node = {v["metric"]: v["value"] for v in values if v["device_serial_id"] == "gw9"}
    assert node == {
        "ATTR/description": "bench gateway",
        "DATA/uptime_s": 1,
        "CMD/Node Control/Rebirth": False,
    }
    assert {v["tenant"] for v in values} == {"plant9"}
    # The library's NDEATH carries a later bdSeq than its NBIRTH (it draws a new
    # one for every death payload it makes), so by Sparkplug's rule it is the
    # death of an older session: ignored, and counted.  DDEATH has no bdSeq.
    assert seen_events(events) == {
        ("gw9", "online"),
        ("gw9/pump9", "online"),
        ("gw9/pump9", "offline"),
    }
    assert 'edge_bridge_sparkplug_events_total{kind="seq_gaps"} 0.0' in stale  # fmt: skip
