"""A configured endpoint's hub and its reload, without sockets: events
rendered once per metric filter, SSE ids by cursor or counter, and a reload
that applies new contracts only where paths and source are unchanged."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bridge.config_loader import load_config
from bridge.core.events import Filters
from bridge.core.plan import compile_config
from bridge.core.stream_plan import EndpointPlan
from bridge.stream.hub import Client, ClientQueue, EndpointHub, Transport
from bridge.stream.service import StreamService

CONFIG = """
[[streams]]
name = "plant"
auth = "none"
websocket_path = "/plant"
sse_path = "/plant/sse"
max_per_tenant = {limit}
envelope = {{ kind = "message", template = {{ d = "{{device}}", m = "{{metrics}}" }} }}
source = {{ topics = ["raw"], read = "mapping", mapping = "telemetry" }}
"""


def plans(
    tmp_path: Path, limit: int = 3, path: str = "/plant"
) -> tuple[Any, tuple[EndpointPlan, ...]]:
    file = tmp_path / "bridge.toml"
    file.write_text(textwrap.dedent(CONFIG.format(limit=limit)).replace("/plant", path))
    loaded = load_config(file)
    return loaded.config, compile_config(loaded).streams


def raw(device: str, **metrics: float) -> tuple[bytes, list[tuple[str, bytes]]]:
    payload = json.dumps({"schema_version": 1, "device": device, "metrics": metrics}).encode()
    return payload, [("mqtt_topic", f"tenant/t1/device/{device}/telemetry".encode())]


def client(
    hub: EndpointHub, filters: Filters, transport: Transport = Transport.WEBSOCKET
) -> Client:
    made = Client(transport, filters, "admin", ClientQueue(100, 100))
    hub.register(made)
    return made


def test_rendered_once_per_metric_filter_and_sse_ids(tmp_path: Path) -> None:
    _, (plan,) = plans(tmp_path)
    calls: list[Any] = []
    hub = EndpointHub(max_per_tenant=10, reader=plan.reader, envelope=plan.envelope, groups_of={})
    temps = [client(hub, Filters(None, None, frozenset({"t"}))) for _ in range(3)]
    everything = client(hub, Filters(None))
    counted = client(hub, Filters(None), Transport.SSE)
    counted.sse_counter = 0
    cursor = client(hub, Filters(None), Transport.SSE)
    value, headers = raw("D1", t=1.5, h=40)
    hub.publish_kafka("raw", 0, 7, value, "s", headers, 0)
    (event,) = temps[0].queue._items
    original = event.render
    assert original is not None
    event.render = lambda wanted: calls.append(wanted) or original(wanted)
    texts = [event.text_for(c) for c in temps]
    assert texts[0] is texts[1] is texts[2]
    assert json.loads(texts[0] or "") == {"d": "D1", "m": {"t": 1.5}}
    assert json.loads(event.text_for(everything) or "")["m"] == {"t": 1.5, "h": 40}
    assert calls == [frozenset({"t"}), None]
    assert (event.sse_for(counted) or b"").startswith(b"id: 1\ndata: ")
    assert (event.sse_for(cursor) or b"").startswith(b"id: raw@0:8\ndata: ")


def test_a_device_without_requested_metrics_is_not_queued(tmp_path: Path) -> None:
    _, (plan,) = plans(tmp_path)
    hub = EndpointHub(max_per_tenant=10, reader=plan.reader, envelope=plan.envelope, groups_of={})
    wants_t = client(hub, Filters(None, None, frozenset({"t"})))
    value, headers = raw("D1", h=1)
    hub.publish_kafka("raw", 0, 0, value, "s", headers, 0)
    hub.publish_kafka("raw", 0, 1, b"not json", "s", headers, 0)
    hub.publish_kafka("raw", 0, 2, value, "s", None, 0)  # no topic header
    assert not wants_t.queue._items
    assert hub.malformed.total == 2


def test_reload_applies_contracts_only_where_paths_and_source_stay(tmp_path: Path) -> None:
    config, first = plans(tmp_path, limit=3)
    service = StreamService(config, [("127.0.0.1", 0)], endpoints=first)
    (endpoint,) = service.endpoints
    assert service.source is None and len(service.sources) == 1
    _, same_paths = plans(tmp_path, limit=5)
    service.reload_endpoints(same_paths)
    assert endpoint.hub.max_per_tenant == 5
    _, moved = plans(tmp_path, limit=7, path="/elsewhere")
    with capture_logs() as logs:
        service.reload_endpoints(moved)
    assert endpoint.hub.max_per_tenant == 5
    assert [e["event"] for e in logs] == ["stream.endpoints_need_restart"]
