"""The three ``examples/streams/*.toml`` files through the real daemon, each
with a client written the way that dashboard's own client is: the
``websockets`` package for WebSocket, ``httpx`` for SSE and the status, PyJWT
for tokens, a plain confluent-kafka producer for the GPS records; nothing of
the project's own stream helpers on the client side.

Each test runs the example file as shipped, with the README's flags (broker
addresses, listen address) and ``EDGE_BRIDGE_JWT_SECRET``; only keepalive
intervals are shortened, in a copy of the file, so that a keepalive shows
within a second.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, publish_many, wait_until

REPO = Path(__file__).resolve().parents[2]
SECRET = "examples-test-secret-0123456789abcdef"
ISO_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- the daemon
def ensure_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2)]).values():
        try:
            future.result(20)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


@contextmanager
def example(
    setup: BridgeSetup, name: str, topics: list[str], shorten: dict[str, str] | None = None
) -> Iterator[BridgeProcess]:
    """``edge-bridge run --config examples/streams/<name>.toml`` with the
    README's flags, once MQTT is connected and the stream's consumer assigned."""
    text = (REPO / "examples" / "streams" / f"{name}.toml").read_text()
    for old, new in (shorten or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    config = setup.workdir / f"{name}.toml"
    config.write_text(text)
    for topic in topics:
        ensure_topic(setup.tansu.bootstrap, topic)
    args = [
        "--mqtt-url",
        setup.mosquitto.url,
        "--kafka-bootstrap",
        setup.tansu.bootstrap,
        "--listen",
        f"127.0.0.1:{setup.listen_port}",
    ]
    env = {"EDGE_BRIDGE_JWT_SECRET": SECRET, "STATE_DIRECTORY": str(setup.workdir / "state")}
    with BridgeProcess(config, args=args, env=env) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        bridge.wait_for_event("stream.kafka_state", timeout=30, state="ok")
        yield bridge


def ws_url(setup: BridgeSetup, path: str) -> str:
    return f"ws://127.0.0.1:{setup.listen_port}{path}"


def http_url(setup: BridgeSetup, path: str) -> str:
    return f"http://127.0.0.1:{setup.listen_port}{path}"


def token(**claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 86_400, **claims}, SECRET, algorithm="HS256")


def receive(ws: ClientConnection, timeout: float = 15.0) -> Any:
    return json.loads(ws.recv(timeout=timeout))


def close_code(url: str, **kwargs: Any) -> int | None:
    """Connect and read until the server closes; its close code."""
    with connect(url, **kwargs) as ws:
        try:
            while True:
                ws.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
    return None


def publish(setup: BridgeSetup, tenant: str, device: str, metrics: dict[str, Any]) -> None:
    payload = {"schema_version": 1, "device": device, "metrics": metrics}
    topic = f"tenant/{tenant}/device/{device}/telemetry"
    publish_many(setup.mosquitto.url, [(topic, json.dumps(payload).encode(), 1)])


def wait_for(ws: ClientConnection, want: Any, count: int, timeout: float = 20.0) -> list[Any]:
    """The next ``count`` messages for which ``want(message)`` holds."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        message = receive(ws, max(0.1, deadline - time.monotonic()))
        if want(message):
            got.append(message)
    return got


# --------------------------------------------------------------------------- channels.toml
def test_channels_dashboard(setup: BridgeSetup) -> None:
    t1, t2 = f"acme-{setup.unique}", f"globex-{setup.unique}"
    with example(setup, "channels", ["telemetry.clean"]):
        path = "/ws/telemetry/stream/"
        assert close_code(ws_url(setup, f"{path}?token={token(role='viewer')}")) == 4403
        assert close_code(ws_url(setup, path)) == 4001
        filtered = connect(
            ws_url(setup, f"{path}?token={token(role='admin')}&device=D1&metric=temperature")
        )
        one_org = connect(ws_url(setup, f"{path}?token={token(role='client')}"))
        own = connect(ws_url(setup, f"{path}?token={token(role='client', tenant=t2)}"))
        with filtered, one_org, own:
            for ws in (filtered, one_org, own):
                assert receive(ws)["type"] == "connected"
            publish(setup, t1, "D1", {"temperature": 21.5, "humidity": 40})
            publish(setup, t2, "D2", {"temperature": 19})

            def ours(m: Any) -> bool:
                return m.get("type") == "telemetry.update" and m["data"]["tenant"] in (t1, t2)

            (event,) = wait_for(filtered, ours, 1)
            assert re.match(ISO_MS, event.pop("sent_at"))
            assert event["event_id"].startswith("telemetry.clean:")
            del event["event_id"]
            data = event.pop("data")
            assert event == {"type": "telemetry.update", "schema_version": 1}
            assert (data["tenant"], data["device_serial_id"], data["metric"]) == (
                t1,
                "D1",
                "temperature",
            )
            assert data["value"] == 21.5
            # A client token without a tenant sees every tenant (one organisation).
            seen = wait_for(one_org, ours, 3)
            assert {(m["data"]["tenant"], m["data"]["metric"]) for m in seen} == {
                (t1, "temperature"),
                (t1, "humidity"),
                (t2, "temperature"),
            }
            (mine,) = wait_for(own, ours, 1)
            assert mine["data"]["tenant"] == t2


# --------------------------------------------------------------------------- gps-passthrough.toml
class _Pings(logging.Handler):
    """The ping frames the ``websockets`` client logs at debug level."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("< PING"):
            self.count += 1


def test_gps_passthrough_dashboard(setup: BridgeSetup) -> None:
    a, b, c = (f"08{uuid.uuid4().int % 10**8:08d}" for _ in range(3))
    records = [
        {
            "data": {"DEVICE_ID": device, "LATITUD": "+20.65", "LONGITUD": "-103.35"},
            "decoded": {"speed": 12},
            "metadata": {"source": "tracker"},
            "raw": "$GPRMC,...",
            "uuid": str(uuid.uuid4()),
        }
        for device in (a, c, b)
    ]
    values = [json.dumps(r, separators=(",", ":")).encode() for r in records]
    junk = [b"not json at all", b'{"data": {"LATITUD": "+1"}, "uuid": "x"}']
    pings = _Pings()
    logger = logging.getLogger("websockets.client")
    logger.addHandler(pings)
    logger.setLevel(logging.DEBUG)
    shorten = {"interval_s = 60.0": "interval_s = 1.0"}
    try:
        with example(setup, "gps-passthrough", ["tracking.data"], shorten) as bridge:
            # No token, as stated in the file: said at start.
            assert bridge.events("stream.auth_none", endpoint="gps")
            some = connect(ws_url(setup, f"/api/v1/stream?device_ids={a},{b}"))
            every = connect(ws_url(setup, "/api/v1/stream"))
            with some, every:
                producer = Producer({"bootstrap.servers": setup.tansu.bootstrap})
                for value in junk:
                    producer.produce("tracking.data", value)
                for record, value in zip(records, values, strict=True):
                    producer.produce("tracking.data", value, key=record["data"]["DEVICE_ID"])
                assert producer.flush(20) == 0
                mine = {a, b, c}

                def ours(m: Any) -> bool:
                    return m.get("data", {}).get("DEVICE_ID") in mine

                # Two partitions: order holds per device only.
                got = wait_for(some, ours, 2)
                assert sorted(got, key=str) == sorted([records[0], records[2]], key=str)
                assert sorted(wait_for(every, ours, 3), key=str) == sorted(records, key=str)
                # Pass-through means the record's bytes unchanged.
                producer.produce("tracking.data", values[0], key=a)
                producer.flush(20)
                raw = some.recv(timeout=15)
                while json.loads(raw).get("data", {}).get("DEVICE_ID") != a:
                    raw = some.recv(timeout=15)
                assert raw == values[0].decode()
                wait_until(lambda: pings.count >= 2 or None, 15, "two WebSocket pings")
            status = httpx.get(http_url(setup, "/api/stream/status")).json()
            assert status["malformed_records"] >= 2
            assert status["endpoints"]["gps"]["malformed_records"] >= 2
            assert status["endpoints"]["gps"]["paths"] == ["/api/v1/stream"]
    finally:
        logger.removeHandler(pings)


# --------------------------------------------------------------------------- customer-portal.toml
PORTAL = "/api/v1/customer/telemetry/stream"


def portal_token(tenant: object = None, roles: tuple[str, ...] = ("customer",)) -> str:
    claims: dict[str, Any] = {"realm_access": {"roles": list(roles)}, "sub": "u1"}
    if tenant is not None:
        claims["organization"] = tenant
    return token(**claims)


def test_customer_portal_websocket(setup: BridgeSetup) -> None:
    tenant = f"org-{setup.unique}"
    shorten = {"interval_s = 30.0": "interval_s = 1.0"}
    with example(setup, "customer-portal", ["telemetry.raw"], shorten):
        url = ws_url(setup, PORTAL)
        assert close_code(url) == 4001
        assert close_code(f"{url}?token=not.a.token") == 4001
        assert close_code(f"{url}?token={portal_token({tenant: {}}, ('viewer',))}") == 4003
        assert close_code(f"{url}?token={portal_token()}") == 4003
        good = portal_token({tenant: {"name": "Org"}})
        query = f"?token={good}&device_id=D1,D2&metric=temperature"
        with connect(url + query) as ws:
            assert receive(ws) == {
                "type": "connected",
                "tenant_id": tenant,
                "filters": {"device_ids": ["D1", "D2"], "metric_names": ["temperature"]},
            }
            publish(setup, tenant, "D2", {"humidity": 40})  # no requested metric: skipped
            publish(setup, tenant, "D3", {"temperature": 1})  # not subscribed
            publish(setup, tenant, "D1", {"temperature": 21.5, "humidity": 40})
            (event,) = wait_for(ws, lambda m: m["type"] == "telemetry", 1)
            assert re.match(ISO_MS, event.pop("timestamp"))
            assert event == {
                "type": "telemetry",
                "device_id": "D1",
                "tenant_id": tenant,
                "metrics": {"temperature": 21.5},
                "topic": f"tenant/{tenant}/device/D1/telemetry",
            }
            # Idle for a second: the JSON keepalive.
            ping = wait_for(ws, lambda m: m["type"] == "ping", 1)[0]
            assert re.match(ISO_MS, ping["ts"])

            def ask(action: dict[str, Any]) -> Any:
                ws.send(json.dumps(action))
                return wait_for(ws, lambda m: m["type"] != "ping", 1)[0]

            assert ask({"action": "subscribe", "device_id": "D3"}) == {
                "type": "subscribed",
                "device_id": "D3",
            }
            assert ask({"action": "subscribe", "device_ids": ["D4", "D5"]}) == {
                "type": "subscribed",
                "device_ids": ["D4", "D5"],
            }
            assert ask({"action": "unsubscribe", "device_id": "D1"}) == {
                "type": "unsubscribed",
                "device_id": "D1",
            }
            assert ask({"action": "set_metrics", "metrics": ["humidity"]}) == {
                "type": "metrics_updated",
                "metrics": ["humidity"],
            }
            publish(setup, tenant, "D1", {"humidity": 1})  # unsubscribed
            publish(setup, tenant, "D3", {"temperature": 2, "humidity": 55})
            (event,) = wait_for(ws, lambda m: m["type"] == "telemetry", 1)
            assert (event["device_id"], event["metrics"]) == ("D3", {"humidity": 55})
            assert ask({"action": "clear_filters"}) == {"type": "filters_cleared"}
            assert ask({"action": "dance"}) == {"type": "error", "message": "Unknown action: dance"}

        # The tenant's 11th connection is refused; another tenant is not counted.
        listed = portal_token([tenant])
        opened = [connect(f"{url}?token={listed}") for _ in range(10)]
        try:
            for ws in opened:
                assert receive(ws)["type"] == "connected"
            assert close_code(f"{url}?token={good}") == 4029
            operator = token(realm_access={"roles": ["operator"]}, tenant_id="other")
            with connect(f"{url}?token={operator}") as ws:
                assert receive(ws)["tenant_id"] == "other"
            status = httpx.get(http_url(setup, "/api/v1/telemetry/stream/status"))
            assert status.json() == {"total_connections": 10, "max_per_tenant": 10}
        finally:
            for ws in opened:
                ws.close()


def test_customer_portal_sse(setup: BridgeSetup) -> None:
    tenant = f"org-{setup.unique}"
    shorten = {"sse_interval_s = 15.0": "sse_interval_s = 1.0"}
    with example(setup, "customer-portal", ["telemetry.raw"], shorten):
        url = http_url(setup, PORTAL + "/sse")
        refused = httpx.get(url, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
        headers = {"Authorization": f"Bearer {portal_token({tenant: {}})}"}
        with httpx.stream("GET", url + "?metric=temperature", headers=headers, timeout=20) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert next(lines) == "data: " + json.dumps(
                {
                    "type": "connected",
                    "tenant_id": tenant,
                    "filters": {"device_ids": [], "metric_names": ["temperature"]},
                },
                separators=(",", ":"),
            )
            comments = 0
            for line in lines:
                if line.startswith(":"):
                    comments += 1
                if comments == 2:
                    break
            for n in (1, 2):
                publish(setup, tenant, f"D{n}", {"temperature": n})
            frames: list[tuple[str, Any]] = []
            event_id = None
            for line in lines:
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: ") and event_id is not None:
                    frames.append((event_id, json.loads(line[6:])))
                    event_id = None
                if len(frames) == 2:
                    break
        # Ids count this connection's events (two partitions: either order).
        assert [i for i, _ in frames] == ["1", "2"]
        assert sorted((e["device_id"], e["metrics"]["temperature"]) for _, e in frames) == [
            ("D1", 1),
            ("D2", 2),
        ]
