"""Compiling configs into plans: what the plan holds, and every semantic error
reported with its path, all at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.config_loader import load_config
from bridge.core.plan import PlanError, compile_config
from tests.unit.core_fixtures import MAPPINGS, plan_from

WriteConfig = Callable[..., Path]


def plan_errors(path: Path) -> list[str]:
    with pytest.raises(PlanError) as caught:
        compile_config(load_config(path))
    return caught.value.errors


def test_the_default_plan() -> None:
    (m,) = plan_from(MAPPINGS / "telemetry.toml").mappings
    assert (m.name, m.subscription, m.qos) == ("telemetry", "tenant/+/device/+/telemetry", 1)
    assert (m.clean_topic, m.raw_topic, m.dead_letter_topic) == (
        "telemetry.clean",
        "telemetry.raw",
        "telemetry.dlq",
    )
    assert m.key.render({"tenant": "t1", "device": "D"}) == "t1:D"
    assert m.headers == ()
    assert m.metrics_object == ("metrics",)
    assert (m.declared, m.single) == ((), None)
    assert m.device_field == ("device",)
    assert m.schema_version_field == ("schema_version",)
    assert m.schema_versions == frozenset({1})
    assert m.ts_field == ("ts",)
    assert m.ts_required is False
    assert (m.event_id, m.quality, m.dedup_window_ms) == (None, None, None)
    assert m.tenant({"tenant": "t1", "device": "D"}, {}) == "t1"


def test_gps_plan_compiles_paths_and_coercions_once() -> None:
    (m,) = plan_from(MAPPINGS / "gps_tracker.toml").mappings
    assert m.metrics_object is None
    assert [(d.name, d.path, d.unit, d.required) for d in m.declared] == [
        ("latitude", ("data", "LATITUD"), "deg", True),
        ("longitude", ("data", "LONGITUD"), "deg", True),
        ("speed", ("data", "SPEED"), "km/h", True),
        ("satellites", ("data", "SATELLITES"), None, True),
        ("engine_on", ("data", "ENGINE_STATUS"), None, True),
    ]
    by_name = {d.name: d.coerce for d in m.declared}
    assert by_name["engine_on"]("ON") == (True, "bool")
    assert by_name["satellites"]("9") == (9, "numeric")
    assert m.ts_field == ("data", "GPS_DATETIME")
    assert m.ts_parser("2025-10-18 00:51:16") == 1_760_770_276_000  # 06:51:16Z
    assert m.ts_required is True
    assert (m.device_field, m.schema_version_field) == (None, None)  # "" switches them off
    assert m.device({}, {"data": {"DEVICE_ID": "0848086072"}}) == "0848086072"
    assert m.device({}, {"data": {"DEVICE_ID": 848086072}}) == "848086072"
    assert m.event_id is not None


def test_single_reading_plan() -> None:
    (m,) = plan_from(MAPPINGS / "single_reading.toml").mappings
    assert m.single is not None
    segments = {"site": "s1", "asset": "a1", "sensor_type": "TEMPERATURE"}
    assert m.single.name(segments, {}) == "temperature"
    assert m.single.value_path == ("value",)
    assert m.single.unit is not None and m.single.unit(segments, {"unit": "celsius"}) == "celsius"
    assert m.tenant(segments, {}) == "s1"
    assert m.device(segments, {}) == "a1"
    assert m.dedup_window_ms == 60_000
    assert m.dedup_max_entries == 100_000


def test_site_meter_plan() -> None:
    (m,) = plan_from(MAPPINGS / "site_meter.toml").mappings
    assert m.key.render({"site": "s1", "meter": "M-17", "tenant": "utility", "device": "M-17"}) == (
        "s1:M-17"
    )
    assert [(name, t.text) for name, t in m.headers] == [("site", "{site}")]
    assert m.metrics_object == ("readings",)
    assert m.tenant({"site": "s1", "meter": "M"}, {}) == "utility"


MAPPING_ERRORS = [
    (
        'mqtt = { topic = "tenant/{tenant}/device/#/x" }',
        "mqtt.topic: '#' must be the last level of 'tenant/{tenant}/device/#/x'",
    ),
    (
        'mqtt = { shared_group = "my group" }',
        "mqtt.shared_group: use letters, digits and underscores only",
    ),
    (
        'kafka = { key = "{site}" }',
        "kafka.key: unknown placeholder {site} (known: tenant, device)",
    ),
    ('kafka = { key = "{tenant" }', "kafka.key: unbalanced brace in '{tenant'"),
    (
        'kafka = { headers = { zone = "{zone}" } }',
        "kafka.headers.zone: unknown placeholder {zone} "
        "(known: tenant, device, mqtt_qos, mqtt_retain)",
    ),
    ('kafka = { raw_topic = "" }', "kafka.raw_topic: empty Kafka topic name"),
    ('kafka = { clean_topic = "" }', "kafka.clean_topic: empty Kafka topic name"),
    ('kafka = { dead_letter_topic = "" }', "kafka.dead_letter_topic: empty Kafka topic name"),
    (
        'payload = { tenant = { segment = "site" } }',
        "payload.tenant.segment: segment {site} is not in the topic filter "
        "(it has: tenant, device)",
    ),
    (
        'payload = { device = { segment = "device", const = "D" } }',
        "payload.device: set exactly one of segment, field, const",
    ),
    ("payload = { device = {} }", "payload.device: set exactly one of segment, field, const"),
    ('payload = { device = { field = "" } }', "payload.device.field: empty field path"),
    (
        'payload = { event_id = { field = "id", segment = "device" } }',
        "payload.event_id: set exactly one of segment, field, const",
    ),
    (
        'payload = { quality = { segment = "q" } }',
        "payload.quality.segment: segment {q} is not in the topic filter (it has: tenant, device)",
    ),
    (
        'payload = { ts = { format = "unix" } }',
        "payload.ts: unknown time format 'unix': use auto, iso, epoch_s, epoch_ms "
        "or a strftime pattern",
    ),
    (
        'payload = { ts = { format = "%Y-%m-%d", tz = "Mexico" } }',
        "payload.ts: unknown time zone 'Mexico'",
    ),
    (
        'payload = { ts = { format = "%Y %Q" } }',
        "payload.ts: format '%Y %Q' cannot be read back: 'Q' is a bad directive in format '%Y %Q'",
    ),
    (
        'payload = { ts = { field = "", required = true } }',
        "payload.ts.required: a required time needs a field",
    ),
    (
        'payload = { metrics_object = "m", fields = { a = { field = "a" } } }',
        "payload: set only one of metrics_object, fields, single",
    ),
    (
        'payload = { fields = { a = { field = "" } } }',
        "payload.fields.a.field: empty field path",
    ),
    (
        'payload = { fields = { a = { field = "a", enum = ["x"] } } }',
        'payload.fields.a.enum: enum only applies to type = "str"',
    ),
    (
        'payload = { single = { name = { segment = "sensor" } } }',
        "payload.single.name.segment: segment {sensor} is not in the topic filter "
        "(it has: tenant, device)",
    ),
    (
        'payload = { single = { name = { field = "n" }, value = "" } }',
        "payload.single.value: empty field path",
    ),
    (
        'payload = { single = { name = { field = "n" }, unit = { field = "u", const = "C" } } }',
        "payload.single.unit: set exactly one of segment, field, const",
    ),
    ("dedup = { window_s = 60 }", "dedup: dedup needs payload.event_id to say where the id is"),
    (
        "kafka = { clean_enabled = false, raw_enabled = false }",
        "kafka.clean_enabled: with raw_enabled false too the mapping would write nothing",
    ),
    (
        'kafka = { clean_enabled = false }\npayload = { device = { field = "id" } }',
        "payload.device: a raw-only mapping (kafka.clean_enabled = false) does not read the "
        "payload: take it from a topic segment or a constant",
    ),
    (
        'kafka = { clean_enabled = false }\ndedup = {}\npayload = { event_id = { field = "id" } }',
        "dedup: a raw-only mapping does not read the payload's event id",
    ),
    (
        'dedup = { window_s = 0 }\npayload = { event_id = { field = "id" } }',
        "dedup.window_s: must be positive",
    ),
    (
        'dedup = { max_entries = 0 }\npayload = { event_id = { field = "id" } }',
        "dedup.max_entries: must be at least 1",
    ),
]


@pytest.mark.parametrize(("body", "error"), MAPPING_ERRORS)
def test_mapping_errors_carry_their_path(tmp_config: WriteConfig, body: str, error: str) -> None:
    path = tmp_config(f"[[mappings]]\n{body}\n")
    assert plan_errors(path) == [f"{path}: mappings[0].{error}"]


def test_every_error_of_every_mapping_is_reported_at_once(tmp_config: WriteConfig) -> None:
    tmp_config(
        """
        [[mappings]]
        name = "meters"
        mqtt = { topic = "site/{site}/meter/{meter}" }
        kafka = { key = "{site}:{phase}" }
        dedup = { window_s = -1 }

        [[mappings]]
        name = "meters"
        mqtt = { topic = "x/{device}" }
        """,
        "mappings/meters.toml",
    )
    path = tmp_config(
        """
        include = ["mappings/meters.toml"]

        [[mappings]]
        payload = { ts = { format = "%Y-%m-%d", tz = "Nowhere/City" }, device = {} }

        [metrics.door]
        type = "bool"
        min = 0
        alarms = [{ kind = "above", threshold = 1 }]

        [metrics.temperature]
        alarms = [
            { kind = "outside", low = 5 },
            { kind = "below", for_s = -1 },
        ]

        [devices.t1.DEV-001]
        metrics = ["temperature", "pressure"]
        """
    )
    meters = "mappings/meters.toml: mappings"
    assert plan_errors(path) == [
        f"{path}: mappings[0].payload.device: set exactly one of segment, field, const",
        f"{path}: mappings[0].payload.ts: unknown time zone 'Nowhere/City'",
        f"{meters}[0].kafka.key: unknown placeholder {{phase}} "
        "(known: tenant, device, site, meter)",
        f"{meters}[0].payload.tenant.segment: segment {{tenant}} is not in the topic filter "
        "(it has: site, meter)",
        f"{meters}[0].payload.device.segment: segment {{device}} is not in the topic filter "
        "(it has: site, meter)",
        f"{meters}[0].dedup: dedup needs payload.event_id to say where the id is",
        f"{meters}[0].dedup.window_s: must be positive",
        f"{meters}[1].name: mapping name 'meters' is used twice",
        f"{meters}[1].payload.tenant.segment: segment {{tenant}} is not in the topic filter "
        "(it has: device)",
        f"{path}: metrics.door: min and max only apply to numeric metrics",
        f"{path}: metrics.door.alarms[0]: alarms only apply to numeric metrics",
        f"{path}: metrics.temperature.alarms[0]: kind outside needs low <= high",
        f"{path}: metrics.temperature.alarms[1]: kind below needs threshold",
        f"{path}: metrics.temperature.alarms[1].for_s: must not be negative",
        f"{path}: devices.t1.DEV-001.metrics: metric 'pressure' is not in the metric catalog",
    ]


def test_catalog_and_registry_compile_into_the_plan(tmp_config: WriteConfig) -> None:
    path = tmp_config(
        """
        [metrics.temperature]
        unit = "°C"
        [metrics.humidity]
        [devices.t1.DEV-001]
        metrics = ["temperature"]
        [devices.t1.DEV-002]
        active = false
        """
    )
    plan = plan_from(path)
    assert set(plan.catalog) == {"temperature", "humidity"}
    assert plan.allowed_metrics == {("t1", "DEV-001"): frozenset({"temperature"})}
    assert plan.registry["t1"]["DEV-002"].active is False


def test_outside_band_needs_low_not_above_high(tmp_config: WriteConfig) -> None:
    path = tmp_config("[metrics.t]\nalarms = [{ kind = 'outside', low = 5, high = 1 }]\n")
    assert plan_errors(path) == [f"{path}: metrics.t.alarms[0]: kind outside needs low <= high"]
