"""What a same-run ratio to the paho reference can reach on the bench's
machine (bench/paho_ceiling.py), and the report's rows for it."""

from __future__ import annotations

import pytest

from bench.ingest import IngestResult
from bench.paho_ceiling import ceiling
from bench.report import table

#: The paho reference held by its one Python thread: 60,000 msgs/s.
PAHO = {"sut-0": 1.0, "sut-0 gil": 1.0, "mosquitto": 0.45, "load-0": 0.15}
#: A bridge at 54,000 msgs/s on 2 cores: all processes together use 1.8 of
#: them; mosquitto, Tansu and the load 0.9 (16.7 µs per message), the bridge
#: 0.9 (16.7 µs).  "machine" is the whole machine's busy cores, not a part.
BRIDGE = {
    "sut-0": 0.9,
    "sut-0 gil": 0.8,
    "mosquitto": 0.45,
    "tansu": 0.3,
    "load-0": 0.15,
    "machine": 1.9,
}


def test_the_runs_compared_at_equal_cores_and_against_a_bridge_that_costs_nothing() -> None:
    got = ceiling(54_000, BRIDGE, 60_000, PAHO, cores=2, target=1.2)
    assert got is not None
    # All processes fill the 2 cores at 2 / 1.8 of the rate: 60,000, as paho.
    assert got.equal_cores == pytest.approx(1.0)
    # Without the bridge, 0.9 cores at 54,000: the cores are full at 120,000.
    assert got.free_bridge == pytest.approx(2.0)
    # 1.2x paho is 72,000 msgs/s: 2 cores allow 27.8 µs per message for all
    # processes, of which the others spend 16.7.
    assert got.budget_us == pytest.approx(2 / 72_000 * 1e6 - 0.9 / 54_000 * 1e6)
    assert got.budget_us == pytest.approx(11.1, abs=0.05)
    assert got.spent_us == pytest.approx(0.9 / 54_000 * 1e6)


def test_a_target_past_the_ceiling_leaves_a_negative_budget() -> None:
    got = ceiling(54_000, BRIDGE, 60_000, PAHO, cores=2, target=2.5)
    assert got is not None
    assert got.free_bridge < 2.5
    assert got.budget_us < 0


def test_one_thread_bounds_the_ceiling_before_the_cores_do() -> None:
    # mosquitto at 0.8 of its one core: the cores would allow more.
    busy_broker = {**BRIDGE, "mosquitto": 0.8, "tansu": 0.05}
    got = ceiling(54_000, busy_broker, 60_000, PAHO, cores=2, target=1.2)
    assert got is not None
    assert got.free_bridge == pytest.approx(54_000 / 0.8 / 60_000)


def test_no_figure_from_a_run_that_measured_nothing() -> None:
    assert ceiling(0, BRIDGE, 60_000, PAHO, cores=2, target=1.2) is None
    assert ceiling(54_000, BRIDGE, 0, PAHO, cores=2, target=1.2) is None


def _result(name: str, rate: float, split: dict[str, float]) -> IngestResult:
    return IngestResult(name, 1, "closed loop", rate, 1000, 1000, 0.0, 0.0, {}, split=split)


def test_the_report_prints_the_ceiling_beside_the_ratios() -> None:
    results = {
        "paho-qos1": _result("paho-qos1", 60_000, PAHO),
        "qos1": _result("qos1", 54_000, BRIDGE),
    }
    text = table(results, 10_000, cores=2)
    assert "| same runs at equal cores" in text and "| qos1 1.00x |" in text
    assert "| qos1 2.00x |" in text
    assert "| qos1 11.1 / 16.7 (for 1.2x) |" in text
    # Without the paho reference there is nothing to compare: no rows.
    alone = table({"qos1": results["qos1"]}, 10_000, cores=2)
    assert "ceiling here" not in alone
