"""Hot reload on SIGHUP through the real daemon: new mappings and catalog take
effect on the live MQTT session; an invalid file is refused and the old config
stays in force."""

from __future__ import annotations

import json
import signal

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many, wait_until

METER_MAPPING = """
[[mappings]]
name = "meters"
[mappings.mqtt]
topic = "site/{{site}}/meter/{{meter}}/reading"
[mappings.kafka]
clean_topic = "{clean}"
raw_enabled = false
dead_letter_topic = "{dlq}"
key = "{{site}}:{{meter}}"
[mappings.payload]
tenant = {{ segment = "site" }}
device = {{ segment = "meter" }}
"""


def _reading(value: float) -> bytes:
    return json.dumps({"schema_version": 1, "metrics": {"energy": value}}).encode()


def test_sighup_adds_a_mapping_and_a_catalog_without_reconnecting(setup: BridgeSetup) -> None:
    config = setup.config()
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        base = config.read_text()
        meters = METER_MAPPING.format(clean=setup.clean, dlq=setup.dlq)
        catalog = '\n[metrics.energy]\ntype = "numeric"\nunit = "kWh"\nmax = 100\n'
        # TOML tables must come after top-level keys: insert the catalog before
        # the first [[mappings]] and the new mapping at the end.
        head, sep, tail = base.partition("[[mappings]]")
        config.write_text(head + catalog + sep + tail + meters)
        mark = bridge.mark()
        bridge.send_signal(signal.SIGHUP)
        bridge.wait_for_event("bridge.reloaded", since=mark, timeout=15)
        bridge.wait_for_event("mqtt.subscriptions_changed", since=mark, timeout=15)
        publish_many(
            setup.mosquitto.url,
            [
                ("site/s1/meter/m1/reading", _reading(42.0), 1),
                ("site/s1/meter/m1/reading", _reading(420.0), 1),
            ],
        )
        (clean,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        (dead,) = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=1)
        assert len(bridge.events("mqtt.connected")) == 1
        assert bridge.stop() == 0
    assert clean.key == b"s1:m1"
    assert clean.json()["unit"] == "kWh"
    assert dead.json()["reason"] == "value_out_of_range"


def test_invalid_config_on_sighup_is_refused_and_the_old_one_kept(setup: BridgeSetup) -> None:
    config = setup.config()
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        good = config.read_text()
        config.write_text(good.replace('name = "telemetry"', 'name = "telemetry"\nbogus = 1'))
        mark = bridge.mark()
        bridge.send_signal(signal.SIGHUP)
        refused = bridge.wait_for_event("bridge.reload_refused", since=mark, timeout=15)
        assert "mappings[0]" in refused["error"] and "bogus" in refused["error"]
        publish_many(
            setup.mosquitto.url,
            [("tenant/t1/device/D1/telemetry", _reading(1.0), 1)],
        )
        (record,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        assert bridge.stop() == 0
    assert record.key == b"t1:D1"


def test_watch_config_reloads_a_saved_file_and_refuses_a_broken_one(setup: BridgeSetup) -> None:
    """With --watch-config no signal is needed: saving the file reloads it."""
    config = setup.config()
    with BridgeProcess(config, args=["--watch-config", "0.2"]) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        watching = bridge.wait_for_event("config.watching", timeout=15)
        assert watching["files"] == [str(config)]
        good = config.read_text() + METER_MAPPING.format(clean=setup.clean, dlq=setup.dlq)
        mark = bridge.mark()
        config.write_text(good)
        reloaded = bridge.wait_for_event("bridge.reloaded", since=mark, timeout=15)
        assert reloaded["mappings"] == ["telemetry", "meters"]
        bridge.wait_for_event("mqtt.subscriptions_changed", since=mark, timeout=15)
        mark = bridge.mark()
        config.write_text(good.replace('name = "meters"', 'name = "meters"\nbogus = 1'))
        refused = bridge.wait_for_event("bridge.reload_refused", since=mark, timeout=15)
        assert "bogus" in refused["error"]
        # The meters mapping from the last good file is still in force.
        publish_many(setup.mosquitto.url, [("site/s1/meter/m1/reading", _reading(5.0), 1)])
        (clean,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        assert len(bridge.events("mqtt.connected")) == 1
        assert bridge.stop() == 0
    assert clean.key == b"s1:m1"


def test_watch_config_without_a_config_file_is_refused() -> None:
    bridge = BridgeProcess(None, args=["--watch-config"])
    code = wait_until(lambda: bridge.returncode, 20, "exit")
    assert code == 2
    assert "--watch-config needs a config file" in bridge.output_tail(20)
