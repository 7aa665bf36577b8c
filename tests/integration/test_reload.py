"""Hot reload on SIGHUP through the real daemon: new mappings and catalog take
effect on the live MQTT session; an invalid file is refused and the old config
stays in force, whatever is wrong with it (not UTF-8, a directory, a broken
key file, a setting out of range), and the process goes on ingesting."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many, wait_until
from tests.support.http import http_get, metric_sample

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


def test_a_reload_that_raises_the_payload_bound_takes_the_next_large_message_whole(
    setup: BridgeSetup,
) -> None:
    """limits.max_payload_bytes also bounds the packets the MQTT framer buffers:
    a reload must raise that too, or a message above the old bound arrives
    cut there and the new normalizer takes the cut bytes for the payload."""
    config = setup.config(extra="[limits]\nmax_payload_bytes = 1000\n")
    pad = "x" * 300_000
    payload = json.dumps({"schema_version": 1, "metrics": {"energy": 1.0}, "pad": pad}).encode()
    message = [("tenant/t1/device/BIG/telemetry", payload, 1)]
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        publish_many(setup.mosquitto.url, message)
        (dead,) = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=1)
        config.write_text(config.read_text().replace("= 1000\n", "= 400000\n", 1))
        mark = bridge.mark()
        bridge.send_signal(signal.SIGHUP)
        bridge.wait_for_event("bridge.reloaded", since=mark, timeout=15)
        publish_many(setup.mosquitto.url, message)
        (clean,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        assert len(kafka_read(setup.tansu.bootstrap, setup.dlq, expected=1)) == 1
        assert len(bridge.events("mqtt.connected")) == 1
        assert bridge.stop() == 0
    assert dead.json()["reason"] == "payload_too_large"
    assert clean.key == b"t1:BIG"


def test_watch_config_without_a_config_file_is_refused() -> None:
    bridge = BridgeProcess(None, args=["--watch-config"])
    code = wait_until(lambda: bridge.returncode, 20, "exit")
    assert code == 2
    assert "--watch-config needs a config file" in bridge.output_tail(20)


# --------------------------------------------------------------------------- broken files
def _public_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@dataclass
class _Files:
    """The three files a daemon of these tests reads: its main config, an
    included mapping file and the JWT public key."""

    main: Path
    include: Path
    key: Path

    def __post_init__(self) -> None:
        self.good = {path: path.read_bytes() for path in (self.main, self.include, self.key)}

    def restore(self) -> None:
        for path, data in self.good.items():
            if path.is_dir():
                path.rmdir()
            path.write_bytes(data)


def _files(setup: BridgeSetup) -> _Files:
    key = setup.workdir / "jwt.pem"
    key.write_bytes(_public_key_pem())
    auth = f'[auth]\npublic_key_file = "{key}"\nalgorithms = ["RS256"]\n'
    main = setup.config(extra=auth)
    main.write_text('include = ["meters.toml"]\n' + main.read_text())
    include = setup.workdir / "meters.toml"
    include.write_text(METER_MAPPING.format(clean=setup.clean, dlq=setup.dlq))
    return _Files(main, include, key)


def _replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _edit(path: Path, old: str, new: str) -> Callable[[], None]:
    return lambda: path.write_text(path.read_text().replace(old, new, 1))


def _corruptions(files: _Files) -> list[tuple[str, Callable[[], None], str]]:
    """(what, how, what the refusal must name) for each file the daemon reads."""
    main, include, key = files.main, files.include, files.key
    pem = files.good[key]
    return [
        (
            "main config not UTF-8",
            lambda: main.write_bytes(b"\xff\xfe" + pem),
            f"{main}: not UTF-8",
        ),
        (
            "main config a directory",
            lambda: _replace_with_directory(main),
            f"{main}: is a directory",
        ),
        (
            "include not UTF-8",
            lambda: include.write_bytes(b"x = '\xff'\n"),
            f"{include}: not UTF-8",
        ),
        (
            "include half-written",  # cut inside its first quoted string
            lambda: include.write_bytes(
                files.good[include][: files.good[include].index(b'"') + 3]
            ),
            f"{include}: not valid TOML",
        ),
        (
            "include nested 3,000 deep",
            lambda: include.write_bytes(b"x = " + b"[" * 3000 + b"]" * 3000 + b"\n"),
            f"{include}: not usable TOML",
        ),
        (
            "a 300-digit number",
            _edit(main, "[mqtt]\n", "[mqtt]\nreconnect_max_s = 1" + "0" * 300 + "\n"),
            "mqtt.reconnect_max_s",
        ),
        (
            "include a directory",
            lambda: _replace_with_directory(include),
            f"{include}: is a directory",
        ),
        ("key garbage", lambda: key.write_bytes(b"\x00garbage" * 50), "auth.public_key_file"),
        ("key truncated", lambda: key.write_bytes(pem[: len(pem) // 2]), "not a PEM public key"),
        ("key empty", lambda: key.write_bytes(b""), "empty file"),
        ("key deleted", key.unlink, f"{key}: file not found"),
        ("key a directory", lambda: _replace_with_directory(key), f"{key}: is a directory"),
        (
            "key file setting names a missing path",
            _edit(main, str(key), str(key) + ".missing"),
            "auth.public_key_file",
        ),
        ("unknown algorithm", _edit(main, '"RS256"', '"HS999"'), "auth.algorithms"),
        (
            "client queue below the batch",
            _edit(main, "[stream]\n", "[stream]\nclient_queue = 10\n"),
            "stream.client_queue",
        ),
        (
            "negative back-off",
            _edit(main, "[mqtt]\n", "[mqtt]\nreconnect_min_s = -1\n"),
            "mqtt.reconnect_min_s",
        ),
    ]


def _still_ingesting(setup: BridgeSetup, bridge: BridgeProcess) -> None:
    """Both mappings (the main file's and the include's) still in force."""
    publish_many(
        setup.mosquitto.url,
        [
            ("tenant/t1/device/D1/telemetry", _reading(1.0), 1),
            ("site/s1/meter/m1/reading", _reading(2.0), 1),
        ],
    )
    records = kafka_read(setup.tansu.bootstrap, setup.clean, expected=2)
    assert sorted(r.key for r in records) == [b"s1:m1", b"t1:D1"]
    assert bridge.returncode is None
    assert len(bridge.events("bridge.ready")) == 1
    assert len(bridge.events("mqtt.connected")) == 1


def test_sighup_with_any_broken_file_is_refused_and_the_daemon_keeps_ingesting(
    setup: BridgeSetup,
) -> None:
    files = _files(setup)
    corruptions = _corruptions(files)
    with BridgeProcess(files.main) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        for what, corrupt, named in corruptions:
            corrupt()
            mark = bridge.mark()
            bridge.send_signal(signal.SIGHUP)
            summary = bridge.wait_for_event(
                "bridge.reload_refused", since=mark, timeout=15, errors=1
            )
            assert summary["errors"] == 1, what
            (line,) = [
                e["error"] for e in bridge.events("bridge.reload_refused")[-2:] if "error" in e
            ]
            assert named in line, (what, line)
            files.restore()
        _, metrics = http_get(setup.listen_port, "/metrics")
        refused = metric_sample(metrics, 'edge_bridge_config_reloads_total{result="refused"}')
        assert refused == len(corruptions)
        _still_ingesting(setup, bridge)
        mark = bridge.mark()
        bridge.send_signal(signal.SIGHUP)
        bridge.wait_for_event("bridge.reloaded", since=mark, timeout=15)
        assert bridge.stop() == 0


def test_watch_config_refuses_a_half_written_key_file_then_takes_the_whole_one(
    setup: BridgeSetup,
) -> None:
    files = _files(setup)
    with BridgeProcess(files.main, args=["--watch-config", "0.2"]) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        watching = bridge.wait_for_event("config.watching", timeout=15)
        assert str(files.key) in watching["files"]
        rotated = _public_key_pem()
        mark = bridge.mark()
        files.key.write_bytes(rotated[: len(rotated) // 3])  # caught mid-rotation
        refused = bridge.wait_for_event("bridge.reload_refused", since=mark, timeout=15)
        assert str(files.key) in refused["error"]
        mark = bridge.mark()
        files.key.write_bytes(rotated)
        bridge.wait_for_event("bridge.reloaded", since=mark, timeout=15)
        _still_ingesting(setup, bridge)
        assert bridge.stop() == 0
