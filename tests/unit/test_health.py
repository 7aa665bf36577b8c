"""/healthz and /readyz answers for each state the daemon can be in."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from bridge.core.settings import SpoolSettings
from bridge.ops.health import HealthState, Response, liveness, readiness, spool_state

RUNNING = HealthState(
    started=True, stopping=False, mqtt_connected=True, kafka_state="up", spool="accepting"
)


def decoded(response: Response) -> dict[str, Any]:
    assert response.content_type == "application/json"
    body: dict[str, Any] = msgspec.json.decode(response.body)
    return body


def test_healthz_is_always_ok() -> None:
    response = liveness()
    assert response.status == 200
    assert decoded(response) == {"status": "ok"}


def test_ready_when_mqtt_is_connected_and_kafka_takes_records() -> None:
    response = readiness(RUNNING)
    assert response.status == 200
    assert decoded(response) == {
        "status": "ready",
        "mqtt": "connected",
        "kafka": "up",
        "spool": "accepting",
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"started": False}, "starting: not every part is running yet"),
        ({"stopping": True}, "stopping: draining for shutdown"),
        ({"mqtt_connected": False}, "mqtt: not connected to the broker"),
        (
            {"kafka_state": "down", "spool": "off"},
            "kafka: unreachable, and no spool to hold records",
        ),
        ({"kafka_state": "down", "spool": "full"}, "kafka: unreachable, and the spool is full"),
    ],
)
def test_not_ready_says_why(change: dict[str, Any], reason: str) -> None:
    response = readiness(dataclasses.replace(RUNNING, **change))
    body = decoded(response)
    assert response.status == 503
    assert body["status"] == "not_ready"
    assert body["reasons"] == [reason]


def test_every_reason_is_listed() -> None:
    state = HealthState(
        started=False, stopping=False, mqtt_connected=False, kafka_state="down", spool="off"
    )
    body = decoded(readiness(state))
    assert len(body["reasons"]) == 3
    assert body["mqtt"] == "disconnected"
    assert body["kafka"] == "down"


@pytest.mark.parametrize(
    ("kafka_state", "spool"),
    [("down", "accepting"), ("connecting", "off"), ("up", "full")],
)
def test_ready_while_records_have_somewhere_to_go(kafka_state: str, spool: Any) -> None:
    state = dataclasses.replace(RUNNING, kafka_state=kafka_state, spool=spool)
    assert readiness(state).status == 200


def test_spool_state_follows_the_full_policy() -> None:
    backpressure = SpoolSettings(max_bytes=1000, when_full="backpressure")
    assert spool_state(backpressure, None) == "off"
    assert spool_state(backpressure, 999) == "accepting"
    assert spool_state(backpressure, 1000) == "full"
    drop_oldest = SpoolSettings(max_bytes=1000, when_full="drop_oldest")
    assert spool_state(drop_oldest, 5000) == "accepting"
    assert spool_state(SpoolSettings(enabled=False), 0) == "off"


def test_an_unavailable_spool_warns_while_kafka_takes_records() -> None:
    state = dataclasses.replace(
        RUNNING, spool="unavailable", spool_reason="No space left on device (ENOSPC)"
    )
    response = readiness(state)
    assert response.status == 200
    body = decoded(response)
    assert body["spool"] == "unavailable"
    assert body["warnings"] == ["spool: unavailable: No space left on device (ENOSPC)"]


def test_an_unavailable_spool_is_a_reason_once_kafka_is_down() -> None:
    state = dataclasses.replace(
        RUNNING,
        kafka_state="down",
        spool="unavailable",
        spool_reason="Read-only file system (EROFS)",
    )
    response = readiness(state)
    assert response.status == 503
    assert decoded(response)["reasons"] == [
        "kafka: unreachable, and the spool cannot hold records",
        "spool: unavailable: Read-only file system (EROFS)",
    ]


def test_spool_state_says_unavailable_whatever_it_holds() -> None:
    settings = SpoolSettings(max_bytes=1000)
    assert spool_state(settings, None, "Input/output error (EIO)") == "unavailable"
    assert spool_state(settings, 10, "Input/output error (EIO)") == "unavailable"
    assert spool_state(SpoolSettings(enabled=False), None, "EIO") == "off"
