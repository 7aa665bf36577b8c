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
from tests.support import BridgeProcess, Mosquitto, kafka_read
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
