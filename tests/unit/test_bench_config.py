"""The bench's daemon configs (bench/systems.py): an override of a mapping
table reaches the one mapping, so the raw-only run (bench/run.py
``qos1-raw``) measures a mapping that makes raw records only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.run import INGEST_PHASES
from bench.systems import Topics, bridge_config
from bridge.core.normalize import Normalizer
from tests.unit.core_fixtures import NOW, plan_from


def test_the_raw_only_run_configures_a_pass_through_mapping(tmp_path: Path) -> None:
    brokers: Any = SimpleNamespace(url="mqtt://127.0.0.1:1", bootstrap="127.0.0.1:2")
    path = bridge_config(
        tmp_path,
        brokers,
        brokers,
        Topics("c", "r", "d"),
        qos=1,
        client_id="bench-bridge-0",
        overrides=INGEST_PHASES["qos1-raw"].settings,
    )
    plan = plan_from(path)
    (mapping,) = plan.mappings
    assert (mapping.clean_topic, mapping.raw_topic, mapping.qos) == (None, "r", 1)
    outcome = Normalizer(plan).process("tenant/bench/device/DEV-0001/telemetry", b"{}", NOW)
    assert [record.topic for record in outcome.records] == ["r"]
