"""The MQTT client's security settings against a real mosquitto: TLS with a CA
and a client certificate (mutual TLS), username and password, MQTT 3.1.1."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, Mosquitto, kafka_read, publish_many
from tests.support.certs import issue as _issue
from tests.support.certs import write_pem as _write

PAYLOAD = json.dumps({"schema_version": 1, "metrics": {"t": 1.5}}).encode()


def _publish(broker: Mosquitto, topic: str, **connect: object) -> None:
    """Publish one QoS 1 message with a client configured by the keywords."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if "tls" in connect:
        ca, cert, key = connect["tls"]  # type: ignore[misc]
        client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
    if "auth" in connect:
        user, password = connect["auth"]  # type: ignore[misc]
        client.username_pw_set(user, password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, PAYLOAD, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_mutual_tls(setup: BridgeSetup, tmp_path: Path) -> None:
    ca_key, ca_cert = _issue("edge-bridge test CA", None, None, ca=True)
    server_key, server_cert = _issue("127.0.0.1", ca_key, ca_cert.subject, ip="127.0.0.1")
    client_key, client_cert = _issue("edge-bridge", ca_key, ca_cert.subject)
    _, ca_path = _write(tmp_path, "ca", ca_key, ca_cert)
    server_key_path, server_cert_path = _write(tmp_path, "server", server_key, server_cert)
    client_key_path, client_cert_path = _write(tmp_path, "client", client_key, client_cert)
    tls = f"""
cafile {ca_path}
certfile {server_cert_path}
keyfile {server_key_path}
require_certificate true
"""
    with Mosquitto(tmp_path / "tls-broker", extra_config=tls) as broker:
        mqtt = f"""
protocol = "3.1.1"
[mqtt.tls]
ca_file = "{ca_path}"
cert_file = "{client_cert_path}"
key_file = "{client_key_path}"
"""
        config = setup.config(mqtt_url=f"mqtts://127.0.0.1:{broker.port}", mqtt_extra=mqtt)
        with BridgeProcess(config) as bridge:
            connected = bridge.wait_for_event("mqtt.connected", timeout=30)
            assert connected["protocol"] == "3.1.1"
            bridge.wait_for_event("bridge.ready", timeout=30)
            _publish(
                broker,
                "tenant/t1/device/TLS-1/telemetry",
                tls=(ca_path, client_cert_path, client_key_path),
            )
            (record,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
            assert bridge.stop() == 0
    assert record.key == b"t1:TLS-1"


def test_username_and_password(setup: BridgeSetup, tmp_path: Path) -> None:
    mosquitto_passwd = shutil.which("mosquitto_passwd")
    assert mosquitto_passwd, "mosquitto_passwd comes with Debian's mosquitto package"
    passwords = tmp_path / "passwd"
    subprocess.run(
        [mosquitto_passwd, "-b", "-c", str(passwords), "bridge", "s3cret"], check=True, timeout=10
    )
    auth = f"allow_anonymous false\npassword_file {passwords}\n"
    with Mosquitto(tmp_path / "auth-broker", extra_config=auth) as broker:
        wrong = setup.config(
            mqtt_url=broker.url, mqtt_extra='username = "bridge"\npassword = "wrong"'
        )
        with BridgeProcess(wrong) as refused:
            event = refused.wait_for_event("mqtt.disconnected", timeout=30)
            assert "refused" in event["reason"]
            assert "s3cret" not in "\n".join(line.text for line in refused.lines)
            assert refused.stop() == 0
        right = setup.config(
            mqtt_url=broker.url, mqtt_extra='username = "bridge"\npassword = "s3cret"'
        )
        with BridgeProcess(right) as bridge:
            bridge.wait_for_event("bridge.ready", timeout=30)
            starting = bridge.events("bridge.starting")[0]
            assert starting["config"]["mqtt"]["password"] == "***"
            _publish(broker, "tenant/t1/device/PW-1/telemetry", auth=("bridge", "s3cret"))
            (record,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
            assert bridge.stop() == 0
    assert record.key == b"t1:PW-1"


def _documented_acl() -> str:
    """The per-device ACL file of docs/security.md, as written there."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    blocks = text.split("```")[1::2]
    (acl,) = [block for block in blocks if "user DEV-A" in block]
    return acl


def test_devices_bound_to_their_tenant_by_the_broker_and_the_bridge(
    setup: BridgeSetup, tmp_path: Path
) -> None:
    """Item 12 of issue 10: the documented ACL lets DEV-A publish only under
    acme, so its publish under othercorp never reaches the bridge; a device the
    broker lets through under any tenant (DEV-C, a looser rule) is refused by
    the bridge itself from its device registry."""
    mosquitto_passwd = shutil.which("mosquitto_passwd")
    assert mosquitto_passwd, "mosquitto_passwd comes with Debian's mosquitto package"
    passwords = tmp_path / "passwd"
    for n, user in enumerate(("edge-bridge", "DEV-A", "DEV-B", "DEV-C")):
        create = ["-c"] if n == 0 else []
        subprocess.run(
            [mosquitto_passwd, "-b", *create, str(passwords), user, f"pw-{user}"],
            check=True,
            timeout=10,
        )
    acl = tmp_path / "acl"
    loose = "\nuser DEV-C\ntopic write tenant/+/device/DEV-C/telemetry\n"
    acl.write_text(_documented_acl() + loose)
    auth = f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
    registry = "[devices.acme.DEV-A]\n[devices.othercorp.DEV-B]\n[devices.acme.DEV-C]\n"
    with Mosquitto(tmp_path / "acl-broker", extra_config=auth) as broker:
        config = setup.config(
            registry,
            mqtt_url=broker.url,
            mqtt_extra='username = "edge-bridge"\npassword = "pw-edge-bridge"',
        )
        with BridgeProcess(config) as bridge:
            bridge.wait_for_event("bridge.ready", timeout=30)
            for device, tenant in (
                ("DEV-A", "othercorp"),  # refused by the broker
                ("DEV-A", "acme"),
                ("DEV-B", "othercorp"),
                ("DEV-C", "othercorp"),  # let through, refused by the bridge
            ):
                publish_many(
                    broker.url,
                    [(f"tenant/{tenant}/device/{device}/telemetry", PAYLOAD, 1)],
                    username=device,
                    password=f"pw-{device}",
                )
            clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=2)
            dead = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=1)
            assert bridge.stop() == 0
    assert sorted((r.headers["tenant"], r.headers["device"]) for r in clean) == [
        (b"acme", b"DEV-A"),
        (b"othercorp", b"DEV-B"),
    ]
    (letter,) = dead
    assert letter.json()["reason"] == "device_tenant_mismatch"
    assert letter.json()["detail"] == (
        "device 'DEV-C' is registered for tenant 'acme', not for 'othercorp'"
    )
