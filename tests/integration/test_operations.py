"""Operating the real daemon: /metrics in Prometheus text, /healthz, and
/readyz, which is 503 with a reason while MQTT is not connected."""

from __future__ import annotations

import json

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many, wait_until
from tests.support.http import http_get as _get
from tests.support.http import metric_sample as _sample


def test_metrics_health_and_readiness(setup: BridgeSetup) -> None:
    good = json.dumps({"schema_version": 1, "metrics": {"t": 1.0, "h": 2}}).encode()
    messages = [("tenant/t1/device/D1/telemetry", good, 1)] * 10
    messages += [("tenant/t1/device/D1/telemetry", b"{oops", 1)] * 3
    port = setup.listen_port
    with BridgeProcess(setup.config()) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        assert _get(port, "/healthz") == (200, '{"status":"ok"}')
        publish_many(setup.mosquitto.url, messages)
        kafka_read(setup.tansu.bootstrap, setup.dlq, expected=3)
        status, text = _get(port, "/metrics")
        assert status == 200
        assert _sample(text, 'edge_bridge_mqtt_messages_received_total{mapping="telemetry"}') == 13
        assert _sample(text, 'edge_bridge_dead_letters_total{reason="invalid_json"}') == 3
        assert (
            _sample(text, f'edge_bridge_kafka_records_produced_total{{topic="{setup.clean}"}}')
            == 20
        )
        assert _sample(text, "edge_bridge_mqtt_connected") == 1
        assert _sample(text, "edge_bridge_kafka_delivery_seconds_count") == 13

        status, body = _get(port, "/readyz")
        assert status == 200, body
        setup.mosquitto.stop()
        status, body = wait_until(
            lambda: (r := _get(port, "/readyz"))[0] == 503 and r, 30, "/readyz to say 503"
        )
        reasons = json.loads(body)["reasons"]
        assert any("mqtt" in reason.lower() for reason in reasons), reasons
        setup.mosquitto.start()
        wait_until(lambda: _get(port, "/readyz")[0] == 200, 60, "/readyz to recover")
        status, text = _get(port, "/metrics")
        assert _sample(text, "edge_bridge_mqtt_reconnects_total") >= 1
        assert bridge.stop() == 0


def test_readyz_is_503_until_mqtt_connects(setup: BridgeSetup) -> None:
    setup.mosquitto.stop()
    port = setup.listen_port
    with BridgeProcess(setup.config()) as bridge:
        bridge.wait_for_event("stream.listening", timeout=30)
        status, body = _get(port, "/readyz")
        assert status == 503
        assert json.loads(body)["status"] == "not_ready"
        setup.mosquitto.start()
        bridge.wait_for_event("bridge.ready", timeout=60)
        wait_until(lambda: _get(port, "/readyz")[0] == 200, 30, "/readyz to say 200")
        assert bridge.stop() == 0
