"""The device payloads of the example mappings (issue texts' real-world shapes),
shared by the unit tests of the mapping files and the end-to-end test."""

from __future__ import annotations

from typing import Any

# mappings/single_reading.toml, on telemetry/site-001/asset-001/TEMPERATURE
READING: dict[str, Any] = {
    "event_id": "evt-001",
    "timestamp": 1638360000000,
    "site_id": "site-001",
    "asset_id": "asset-001",
    "sensor_type": "TEMPERATURE",
    "sensor_id": "temp-001",
    "value": 72.5,
    "unit": "celsius",
    "quality_flag": "GOOD",
}

# mappings/gps_tracker.toml, on gps/<tenant>/tracker
GPS_DATA: dict[str, Any] = {
    "DEVICE_ID": "0848086072",
    "LATITUD": "+20.652472",
    "LONGITUD": "-100.391423",
    "SPEED": "0.00",
    "GPS_DATETIME": "2025-10-18 00:51:16",
    "ENGINE_STATUS": "OFF",
    "SATELLITES": "9",
}
GPS_FIX: dict[str, Any] = {
    "data": GPS_DATA,
    "metadata": {"source": "tracker-gw", "firmware": "2.1"},
    "uuid": "6f1c2a0e-8d1b-4c3e-9f57-2b9e4f0a1c77",
}
